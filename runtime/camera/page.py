"""The camera app's one web page (HTML, CSS and a little JavaScript), served at `/` by runtime.camera.server.

It polls `/frame.jpg` for the live frame and `/status` for the source state, posts questions to
`/ask`, and reads the streamed answer from `/answers/{id}/events` (server-sent events: piece, done, failed).
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>dream-s-edge camera</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 1.5rem; max-width: 60rem; }
  #frame { max-width: 100%; max-height: 24rem; background: #222; display: block; }
  #status { color: #555; font-size: 0.9rem; margin: 0.3rem 0 1rem; }
  #ask { display: flex; gap: 0.5rem; }
  #question { flex: 1; font-size: 1rem; padding: 0.4rem; }
  #answer { white-space: pre-wrap; min-height: 2rem; border: 1px solid #ccc; padding: 0.6rem; margin-top: 1rem; }
  #error { color: #b00020; margin-top: 0.6rem; }
  #metrics { color: #333; font-size: 0.9rem; margin-top: 0.4rem; }
</style>
</head>
<body>
<h1>dream-s-edge camera</h1>
<img id="frame" alt="live frame">
<div id="status">connecting…</div>
<form id="ask">
  <input id="question" name="question" autocomplete="off" placeholder="Ask about the picture…">
  <button id="send" type="submit">Ask</button>
</form>
<div id="error"></div>
<div id="answer"></div>
<div id="metrics"></div>
<script>
const $ = (id) => document.getElementById(id);
let source = null;

function refreshFrame() {
  const next = new Image();
  next.onload = () => { $("frame").src = next.src; setTimeout(refreshFrame, 500); };
  next.onerror = () => setTimeout(refreshFrame, 1000);
  next.src = "/frame.jpg?t=" + Date.now();
}

async function refreshStatus() {
  try {
    const s = await (await fetch("/status")).json();
    const src = s.source;
    $("status").textContent = `${s.source_name}: ${src.state}` + (src.message ? ` (${src.message})` : "") +
      ` · ${src.frames} frames, ${src.skipped} skipped, ${src.reconnects} reconnects · ${s.pending} waiting`;
  } catch (e) { $("status").textContent = "app not reachable"; }
  setTimeout(refreshStatus, 1000);
}

function showMetrics(m) {
  $("metrics").textContent = `τ ${m.tau.toFixed(2)} · ${m.tokens_per_s.toFixed(1)} tokens/s · ` +
    `${m.new_tokens} tokens in ${m.wall_s.toFixed(2)} s`;
}

$("ask").addEventListener("submit", async (event) => {
  event.preventDefault();
  if (source) { source.close(); source = null; }
  $("error").textContent = ""; $("answer").textContent = "";
  const response = await fetch("/ask", {method: "POST", headers: {"Content-Type": "application/json"},
                                         body: JSON.stringify({question: $("question").value})});
  const body = await response.json();
  if (!response.ok) { $("error").textContent = body.error; return; }
  $("answer").dataset.state = "streaming";
  source = new EventSource(`/answers/${body.id}/events`);
  source.addEventListener("piece", (e) => { $("answer").textContent += JSON.parse(e.data); });
  source.addEventListener("done", (e) => {
    showMetrics(JSON.parse(e.data)); $("answer").dataset.state = "done"; source.close(); source = null;
  });
  source.addEventListener("failed", (e) => {
    $("error").textContent = JSON.parse(e.data); $("answer").dataset.state = "error";
    source.close(); source = null;
  });
  source.onerror = () => {
    if (source) { $("error").textContent = "Connection to the app lost."; source.close(); source = null; }
  };
});

refreshFrame();
refreshStatus();
</script>
</body>
</html>
"""
