// The live build log: backlog then live lines over the WebSocket, resuming after
// the last line received when the connection drops. Text goes in with
// textContent only: a build's output is never HTML.
"use strict";

(function () {
  const root = document.getElementById("job");
  const box = document.getElementById("log");
  const countEl = document.getElementById("line-count");
  const statusEl = document.getElementById("status");
  const pausedEl = document.getElementById("paused");
  const followBtn = document.getElementById("follow");
  const jobId = root.dataset.job;
  const wsBase = (location.protocol === "https:" ? "wss://" : "ws://") + location.host;

  const state = { lastSeq: 0, count: 0, ended: false, following: true, socket: null, pending: [], reconnects: 0 };
  window.generatorLog = state;

  const ANSI = /\x1b\[([0-9;]*)([A-Za-z])/g;

  function render(text) {
    // SGR colours and bold become spans; other escape sequences are dropped.
    const line = document.createElement("div");
    line.className = "line";
    if (/^Step \d+\/\d+ :/.test(text)) line.classList.add("step");
    if (text.startsWith("[generator] ")) line.classList.add("farm");
    let fg = null, bold = false, last = 0, match;
    const add = (chunk) => {
      if (!chunk) return;
      if (!fg && !bold) { line.appendChild(document.createTextNode(chunk)); return; }
      const span = document.createElement("span");
      if (fg) span.classList.add("ansi-fg-" + fg);
      if (bold) span.classList.add("ansi-bold");
      span.textContent = chunk;
      line.appendChild(span);
    };
    ANSI.lastIndex = 0;
    while ((match = ANSI.exec(text)) !== null) {
      add(text.slice(last, match.index));
      last = ANSI.lastIndex;
      if (match[2] !== "m") continue;
      for (const code of (match[1] || "0").split(";").map(Number)) {
        if (code === 0) { fg = null; bold = false; }
        else if (code === 1) bold = true;
        else if (code === 22) bold = false;
        else if (code === 39) fg = null;
        else if (code >= 30 && code <= 37) fg = code;
        else if (code >= 90 && code <= 97) fg = code - 60;
      }
    }
    add(text.slice(last));
    return line;
  }

  function flush() {
    // One DOM update per animation frame, however many lines arrived.
    state.scheduled = false;
    if (!state.pending.length) return;
    const fragment = document.createDocumentFragment();
    for (const [seq, text] of state.pending) {
      const line = render(text);
      line.dataset.seq = seq;
      fragment.appendChild(line);
    }
    state.pending = [];
    box.appendChild(fragment);
    countEl.textContent = state.count;
    if (state.following) box.scrollTop = box.scrollHeight;
  }

  function schedule() {
    if (!state.scheduled) { state.scheduled = true; requestAnimationFrame(flush); }
  }

  function receive(lines) {
    for (const line of lines) {
      if (line.seq <= state.lastSeq) continue; // never twice
      state.lastSeq = line.seq;
      state.count += 1;
      state.pending.push([line.seq, line.text]);
    }
    schedule();
  }

  function setStatus(status) {
    statusEl.textContent = status;
    statusEl.className = "status " + status;
  }

  async function showResult() {
    const response = await fetch("/api/v1/builds/" + jobId + "/", { credentials: "same-origin" });
    if (!response.ok) return;
    const job = await response.json();
    for (const field of ["image_id", "digest", "error"]) {
      const el = document.getElementById(field);
      if (el && job[field]) { el.textContent = job[field]; el.closest(".field").hidden = false; }
    }
    const tags = document.getElementById("tags");
    tags.textContent = job.tags.join(", ");
    const seconds = (a, b) => (a && b ? ((new Date(b) - new Date(a)) / 1000).toFixed(1) + " s" : "");
    const build = document.getElementById("build-duration");
    build.textContent = seconds(job.started_at, job.push_started_at || job.finished_at);
    document.getElementById("push-duration").textContent = seconds(job.push_started_at, job.finished_at);
  }

  function connect() {
    const socket = new WebSocket(wsBase + "/b1/build/log/ws/" + jobId + "?after=" + state.lastSeq);
    state.socket = socket;
    socket.onmessage = (event) => {
      const frame = JSON.parse(event.data);
      if (frame.type === "log") receive(frame.lines);
      else if (frame.type === "status") setStatus(frame.status);
      else if (frame.type === "end") { state.ended = true; setStatus(frame.status); schedule(); showResult(); }
      else if (frame.type === "error") { state.ended = true; setStatus("error"); statusEl.title = frame.message; }
    };
    socket.onclose = () => {
      if (state.ended) return;
      state.reconnects += 1;
      setTimeout(connect, 1000); // resume after the last line received
    };
  }

  box.addEventListener("scroll", () => {
    const atEnd = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
    state.following = atEnd;
    pausedEl.classList.toggle("on", !atEnd);
  });
  followBtn.addEventListener("click", () => { state.following = true; box.scrollTop = box.scrollHeight; pausedEl.classList.remove("on"); });
  connect();
})();
