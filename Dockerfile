# Label Studio ML backend for YOLO and Segment Anything, on a CUDA-capable PyTorch runtime.
#
#   docker build -t ls-yolo-sam-backend .
#   docker run --gpus all -p 9090:9090 -e LABEL_STUDIO_URL=http://label-studio:8080 ls-yolo-sam-backend
#
# torch and torchvision come from the base image (CUDA 12.4); pip keeps them because they satisfy
# the project's requirements. On a machine without a GPU the same image runs on CPU (DEVICE=auto).
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

# libgl1/libglib2.0-0: OpenCV (opencv-python) needs them at import; curl: the health check.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 curl \
    && rm -rf /var/lib/apt/lists/*

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
COPY pyproject.toml README.md ./
COPY formats ./formats
COPY backend ./backend
COPY tools ./tools
RUN pip install .

# Demo models (shapes) seed the /models volume on first use; add your own .pt files there.
COPY models/ /models/

EXPOSE 9090
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD curl -fsS "http://127.0.0.1:${PORT}/health" || exit 1

# Load every configured model once (a clear error and exit if one is missing or broken), then serve.
CMD ["sh", "-c", "python backend/_wsgi.py --check && exec gunicorn -c backend/gunicorn.conf.py backend._wsgi:app"]
