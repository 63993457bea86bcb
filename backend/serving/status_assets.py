"""The status page's style sheet and its one script (kept in Python so that every install carries them)."""

STYLE = """
:root { --ink: #1f2933; --muted: #6b7785; --line: #e3e7ec; --accent: #2563eb; --bad: #b42318; --good: #067647; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink);
       background: #f5f7fa; }
header { display: flex; align-items: baseline; gap: 12px; padding: 14px 28px; background: #fff;
         border-bottom: 1px solid var(--line); }
h1 { font-size: 18px; margin: 0; }
h2 { font-size: 16px; margin: 0 0 8px; }
main { max-width: 1080px; margin: 0 auto; padding: 18px 20px 40px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 16px 20px; margin-bottom: 18px; }
.muted { color: var(--muted); }
.bad { color: var(--bad); }
.columns { display: flex; flex-wrap: wrap; gap: 24px; }
table.kv th { text-align: left; font-weight: 500; color: var(--muted); padding: 2px 14px 2px 0; vertical-align: top; }
table.kv td { padding: 2px 0; }
ul.inline { list-style: none; padding: 0; margin: 4px 0 0; display: flex; flex-wrap: wrap; gap: 6px 16px; }
code { font-size: 13px; }
table.grid { border-collapse: collapse; margin: 12px 0; width: 100%; }
table.grid caption { text-align: left; font-weight: 600; padding-bottom: 6px; }
table.grid th, table.grid td { border-bottom: 1px solid var(--line); padding: 5px 8px; text-align: left; }
table.grid th { font-weight: 500; color: var(--muted); background: #fafbfc; }
.bar { height: 14px; background: #e8edf3; border-radius: 7px; overflow: hidden; margin: 6px 0; }
.fill { height: 100%; background: var(--accent); transition: width 0.6s ease; }
.progress-text { margin: 2px 0 8px; font-variant-numeric: tabular-nums; }
.failure { background: #fef3f2; border: 1px solid #fecdca; color: var(--bad); border-radius: 6px; padding: 8px 12px; }
img.curves { display: none; max-width: 100%; margin: 8px 0; }
img.curves.shown { display: block; }  /* none before the first epoch's figure */
.details { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
.details table.grid { width: auto; min-width: 280px; }
.plots { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; }
figure img { display: block; width: 260px; border: 1px solid var(--line); border-radius: 4px; }
figcaption { color: var(--muted); font-size: 12px; }
button.serve { font: inherit; padding: 3px 10px; border: 1px solid var(--accent); color: var(--accent); background: #fff;
               border-radius: 5px; cursor: pointer; }
button.serve:hover { background: #eef4ff; }
.served { color: var(--good); font-weight: 600; }
"""

# Polls the job states: moves each running job's bar, redraws its curves when the epoch changes, and reloads the page when
# a job starts or ends. "serve this version" posts JSON (a cross-site form cannot) and reloads on success.
SCRIPT = """
function duration(s) { if (s === null) return '-'; s = Math.round(s);
  const m = Math.floor(s / 60) % 60, sec = String(s % 60).padStart(2, '0');
  return s >= 3600 ? Math.floor(s / 3600) + ':' + String(m).padStart(2, '0') + ':' + sec : m + ':' + sec; }
async function poll() {
  let jobs;
  try { jobs = await (await fetch('/status/jobs', {headers: {Accept: 'application/json'}})).json(); } catch (e) { return; }
  for (const job of jobs) {
    const id = String(job.project).replace('.', '-'), box = document.getElementById('job-' + id);
    if (!box || box.dataset.state !== job.state) { location.reload(); return; }
    if (job.state !== 'running') continue;
    let text = job.phase + (job.epochs ? ': epoch ' + job.epoch + ' of ' + job.epochs : '') + ' · ' + duration(job.elapsed) + ' elapsed';
    if (job.left !== null) text += ' · about ' + duration(job.left) + ' left';
    box.querySelector('.progress-text').textContent = text;
    box.querySelector('.fill').style.width = (job.epochs ? 100 * job.epoch / job.epochs : 0) + '%';
    const key = job.phase + ' ' + job.epoch, curves = document.getElementById('curves-' + id);
    if (curves && job.epoch > 0 && curves.dataset.key !== key) {
      curves.dataset.key = key;
      curves.src = '/status/curves/' + job.project + '.png?e=' + encodeURIComponent(key);
    }
  }
}
setInterval(poll, 2000);
document.addEventListener('click', async (event) => {
  const button = event.target.closest('button.serve');
  if (!button) return;
  button.disabled = true;
  const answer = await fetch('/status/rollback', {method: 'POST', headers: {'Content-Type': 'application/json'},
    body: JSON.stringify({project: button.dataset.project, version: Number(button.dataset.version)})});
  if (answer.ok) { location.reload(); return; }
  let reason = answer.statusText;
  try { reason = (await answer.json()).error; } catch (e) {}
  alert('Not rolled back: ' + reason);
  button.disabled = false;
});
"""
