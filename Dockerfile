# Label Studio ML backend for YOLO and Segment Anything, on a CUDA-capable PyTorch runtime.
#
#   docker build -t ls-yolo-sam-backend .             # MODEL_NAME=sam and mobile_sam
#   docker build --build-arg EXTRAS=sam2,sam-hq -t ls-yolo-sam-backend .   # + sam2 and sam_hq (EXTRAS below)
#   docker run --gpus all -p 9090:9090 -e BASIC_AUTH_USER=labelstudio -e BASIC_AUTH_PASS=... ls-yolo-sam-backend
#
# torch and torchvision come from the base image (CUDA 12.4); pip keeps them because they satisfy
# the project's requirements. Without a GPU the same image runs on CPU (DEVICE=auto).
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

# Extras of pyproject.toml to install too, comma-separated: sam2 (MODEL_NAME=sam2), sam-hq (sam_hq), ...
ARG EXTRAS=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    # Ultralytics would otherwise pip-install packages (e.g. pi-heif) while serving a request.
    YOLO_AUTOINSTALL=false \
    YOLO_CONFIG_DIR=/cache/ultralytics \
    MODEL_ROOT=/models \
    CACHE_DIR=/cache/backend \
    HOST=0.0.0.0 \
    PORT=9090 \
    WORKERS=1 \
    THREADS=4

WORKDIR /app
# Dependencies first, from pyproject.toml alone (this layer is rebuilt only when it changes), the code after.
# - One OpenCV, the headless build (no libGL): Ultralytics requires opencv-python, the GUI build, and both
#   unpack into the same cv2/ folder, so both are removed and only the headless build's files put back.
# - Packages build against the base's torch (no isolated build environment, which would download another
#   torch for sam2's sdist); SAM 2's optional CUDA extension is not compiled.
COPY pyproject.toml ./
RUN mkdir backend formats tools \
    && touch README.md backend/__init__.py formats/__init__.py tools/__init__.py \
    && pip install --progress-bar off "setuptools>=77" \
    && SAM2_BUILD_CUDA=0 pip install --progress-bar off --no-build-isolation -e ".${EXTRAS:+[$EXTRAS]}" \
    && headless=$(pip show opencv-python-headless | sed -n 's/^Version: //p') \
    && pip uninstall -y opencv-python opencv-python-headless \
    && pip install --progress-bar off --no-deps "opencv-python-headless==$headless" \
    && YOLO_CONFIG_DIR=/tmp/ultralytics python -c "import cv2, ultralytics" \
    && rm -r README.md backend formats tools /tmp/ultralytics \
    && useradd --uid 1000 --user-group --create-home backend \
    && mkdir -p /models /cache && chown backend:backend /models /cache

# Demo models (shapes) seed the /models volume on first use; add your own .pt files there.
COPY --chown=backend:backend models/ /models/
COPY formats ./formats
COPY backend ./backend
COPY tools ./tools
COPY deploy/container-start.sh ./deploy/

USER backend
EXPOSE 9090
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["python", "-m", "backend.serving.healthcheck"]

# `backend/_wsgi.py --check` loads every configured model, then gunicorn serves; see the script.
CMD ["sh", "deploy/container-start.sh"]
