"""The page `headstart serve` shows at `/`: drop an image (or pick one), see the top labels and, where the server
can draw one, the heatmap of the top label (POST /explain). No external resources."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>headstart: __TITLE__</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 40em; margin: 2em auto; color: #222; }
#drop { border: 2px dashed #888; border-radius: 8px; padding: 2em; text-align: center; cursor: pointer; }
#drop.over { background: #eef; border-color: #44a; }
#preview { max-width: 100%; max-height: 16em; margin-top: 1em; display: none; }
#heatmap { max-width: 100%; margin-top: 1em; display: none; }
#top li { margin: .3em 0; }
.bar { display: inline-block; height: .8em; background: #46a; vertical-align: middle; margin-left: .5em; }
#error { color: #a22; }
</style>
</head>
<body>
<h1>__TITLE__</h1>
<p>__CLASSES__. Drop an image below, or click to choose one.</p>
<div id="drop">drop an image here<input id="file" type="file" accept="image/*" hidden></div>
<img id="preview" alt="the image sent">
<p id="error"></p>
<p id="note"></p>
<ol id="top"></ol>
<img id="heatmap" alt="where the model saw the top label (Grad-CAM)">
<script>
const drop = document.getElementById('drop'), input = document.getElementById('file');
const top_ = document.getElementById('top'), error = document.getElementById('error');
const preview = document.getElementById('preview'), note = document.getElementById('note');
const heatmap = document.getElementById('heatmap');

async function send(file) {
  top_.innerHTML = ''; error.textContent = ''; note.textContent = ''; heatmap.style.display = 'none';
  preview.src = URL.createObjectURL(file); preview.style.display = 'block';
  const form = new FormData(); form.append('file', file, file.name);
  const response = await fetch('predict?top_k=5', {method: 'POST', body: form});
  const body = await response.json();
  if (!response.ok) { error.textContent = body.detail || response.statusText; return; }
  // A multi-label model answers with its tags; "unknown" is either kind of model's "none of these".
  if (body.labels) note.textContent = 'tags: ' + (body.labels.map(t => t.label).join(', ') || 'none');
  if (body.unknown && body.labels) note.textContent = 'none of these (no tag reaches its threshold)';
  else if (body.unknown) note.textContent = 'unknown: this image looks like none of the classes (score ' +
    body.unknown_score.toPrecision(4) + '); the closest labels:';
  for (const {label, probability} of body.top) {
    const item = document.createElement('li');
    item.className = 'prediction';
    item.textContent = label + ' ' + (100 * probability).toFixed(1) + '%';
    const bar = document.createElement('span');
    bar.className = 'bar'; bar.style.width = (10 * probability) + 'em';
    item.appendChild(bar); top_.appendChild(item);
  }
  // The heatmap is extra: a server that cannot draw one (an exported model, no grad-cam) is not asked.
  if (!__EXPLAIN__) return;
  const drawn = await fetch('explain', {method: 'POST', body: form});
  if (drawn.ok) { heatmap.src = URL.createObjectURL(await drawn.blob()); heatmap.style.display = 'block'; }
}
drop.addEventListener('click', () => input.click());
input.addEventListener('change', () => input.files[0] && send(input.files[0]));
drop.addEventListener('dragover', e => { e.preventDefault(); drop.classList.add('over'); });
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', e => {
  e.preventDefault(); drop.classList.remove('over');
  if (e.dataTransfer.files[0]) send(e.dataTransfer.files[0]);
});
</script>
</body>
</html>
"""
