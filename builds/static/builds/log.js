// The live build log: backlog then live lines over the WebSocket, resuming after
// the last line received when the connection drops. Text goes in with
// textContent only: a build's output is never HTML. Lines are grouped by build
// step (steps.js says which line goes where); "Plain log" shows them as they came.
// A multi-platform build's page has a section per platform, each line in its
// platform's (the frame's `platform`), its prefix dropped, with steps of its own.
"use strict";

(function () {
  const root = document.getElementById("job");
  const box = document.getElementById("log");
  const countEl = document.getElementById("line-count");
  const statusEl = document.getElementById("status");
  const pausedEl = document.getElementById("paused");
  const followBtn = document.getElementById("follow");
  const viewBtn = document.getElementById("view");
  const firstError = document.getElementById("first-error");
  const jobId = root.dataset.job;
  const platforms = (root.dataset.platforms || "").split(" ").filter(Boolean);
  const Steps = window.GeneratorSteps;
  const wsBase = (location.protocol === "https:" ? "wss://" : "ws://") + location.host;

  const state = {
    lastSeq: 0, count: 0, ended: false, following: true, socket: null, reconnects: 0,
    parser: platforms.length ? new Steps.PlatformSections(platforms) : new Steps.StepParser(),
    entries: [], // [seq, text, step, role, section, shown] of every line received, for redrawing
    pending: [], // entries not drawn yet
    touched: new Set(), // steps whose summary changed since the last frame
    views: new Map(), // step -> its drawn group {details, badges, body}
    sectionViews: new Map(), // platform section -> its drawn {details, status, body}
    pinned: new Set(), // steps the viewer opened or closed: left as they are
    plain: false,
    failureText: null,
  };
  window.generatorLog = state;

  const ANSI = /\x1b\[([0-9;]*)([A-Za-z])/g;

  function render(text) {
    // SGR colours and bold become spans; other escape sequences are dropped.
    const line = document.createElement("div");
    line.className = "line";
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

  function drawGroup(step, head) {
    // <details>: folding and keyboard access for free; its summary is the step's first line.
    const details = document.createElement("details");
    details.className = "step-group";
    details.dataset.step = step.id;
    const summary = document.createElement("summary");
    const badges = document.createElement("span");
    badges.className = "badges";
    summary.append(head, badges);
    const body = document.createElement("div");
    body.className = "step-body";
    details.append(summary, body);
    const view = { details, badges, body };
    state.views.set(step, view);
    return view;
  }

  function drawSection(section) {
    // Open by default; a click on its platform folds it.
    const details = document.createElement("details");
    details.className = "platform";
    details.dataset.platform = section.platform;
    details.open = true;
    const summary = document.createElement("summary");
    const name = document.createElement("strong");
    name.textContent = section.platform;
    const status = document.createElement("span");
    const body = document.createElement("div");
    body.className = "platform-body";
    summary.append(name, " ", status);
    details.append(summary, body);
    box.appendChild(details);
    const view = { details, status, body };
    state.sectionViews.set(section, view);
    return view;
  }

  function sectionBody(section) {
    return (state.sectionViews.get(section) || drawSection(section)).body;
  }

  function badge(text, kind) {
    const span = document.createElement("span");
    span.className = "badge " + kind;
    span.textContent = text;
    return span;
  }

  function updateGroup(step) {
    const view = state.views.get(step);
    if (!view) return;
    const badges = [];
    if (step.seconds !== null) badges.push(badge(step.seconds.toFixed(1) + " s", "time"));
    if (step.cached) badges.push(badge("CACHED", "cached"));
    if (step.failed) badges.push(badge("ERROR", "failed"));
    if (step.ignoredError) badges.push(badge("ERROR, ignored: BuildKit went on", "ignored"));
    if (step.stopped) badges.push(badge("stopped", "stopped"));
    if (!step.finished) badges.push(badge("running", "running"));
    view.badges.replaceChildren(...badges);
    view.details.classList.toggle("step-failed", step.failed);
    view.details.classList.toggle("step-running", !step.finished);
    // Finished steps fold, the failing one and those still running stay open.
    if (!state.pinned.has(step)) view.details.open = !step.finished || step.failed;
  }

  function flush() {
    // One DOM update per animation frame, however many lines arrived.
    state.scheduled = false;
    if (state.pending.length) {
      const fragments = new Map(); // a fragment per container already on the page
      const add = (container, node) => {
        if (!container.isConnected) { container.appendChild(node); return; }
        if (!fragments.has(container)) fragments.set(container, document.createDocumentFragment());
        fragments.get(container).appendChild(node);
      };
      for (const [seq, text, step, role, section, shown] of state.pending) {
        const line = render(state.plain ? text : shown);
        line.dataset.seq = seq;
        if (role === "head") line.classList.add("step");
        const outside = state.plain || !section ? box : sectionBody(section);
        if (state.plain || !step) { add(outside, line); continue; }
        if (role === "head") { add(outside, drawGroup(step, line).details); state.touched.add(step); continue; }
        if (role === "noise") line.classList.add("noise");
        add(state.views.get(step).body, line);
      }
      state.pending = [];
      for (const [container, fragment] of fragments) container.appendChild(fragment);
    }
    if (!state.plain) for (const step of state.touched) updateGroup(step);
    for (const [section, view] of state.sectionViews) {
      view.status.textContent = section.status;
      view.status.className = "status " + section.status;
    }
    state.touched.clear();
    countEl.textContent = state.count;
    showFailure();
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
      // A StepParser reads no platform; PlatformSections also answers the section and the text without its prefix.
      const parsed = state.parser.line(line.seq, line.text, line.platform);
      const { step, role, section = null, text: shown = line.text, settled = [] } = parsed;
      if (step) state.touched.add(step);
      for (const other of settled) state.touched.add(other); // drawn running, maybe in an earlier frame
      const failure = state.parser.failure;
      if (failure && failure.seq === line.seq) {
        state.failureText = shown.replace(/^(\[generator\] |#\d+ )/, "");
        if (failure.step) state.touched.add(failure.step);
        for (const other of state.parser.steps) if (other.failed) state.touched.add(other);
      }
      const entry = [line.seq, line.text, step, role, section, shown];
      state.entries.push(entry);
      state.pending.push(entry);
    }
    schedule();
  }

  function showFailure() {
    // The first line that says the build failed, linked from the top of the page.
    const failure = state.parser.failure;
    if (!failure || failure.seq === null || firstError.dataset.seq) return;
    firstError.dataset.seq = failure.seq;
    const where = failure.step ? (failure.step.platform ? failure.step.platform + ": " : "") + failure.step.title : "";
    firstError.textContent = (where ? where + " \u2014 " : "") + state.failureText;
    firstError.closest(".field").hidden = false;
  }

  function jumpToFailure(event) {
    event.preventDefault();
    const failure = state.parser.failure;
    if (!state.plain && failure.step) {
      for (const [section, view] of state.sectionViews) if (section.platform === failure.step.platform) view.details.open = true;
      state.pinned.add(failure.step);
      state.views.get(failure.step).details.open = true;
    }
    const line = box.querySelector('.line[data-seq="' + failure.seq + '"]');
    for (const old of box.querySelectorAll(".line.target")) old.classList.remove("target");
    line.classList.add("target");
    state.following = false;
    pausedEl.classList.add("on");
    line.scrollIntoView({ block: "center" });
  }

  function redraw() {
    // The other view, drawn again from the lines received.
    box.replaceChildren();
    box.classList.toggle("plain", state.plain);
    state.views.clear();
    state.sectionViews.clear();
    state.pinned.clear();
    if (!state.plain) for (const section of state.parser.sections || []) drawSection(section);
    state.pending = state.entries.slice();
    for (const step of state.parser.steps) state.touched.add(step);
    flush();
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
    for (const child of job.children || []) {
      // Each platform's own end (a child cancelled before it started wrote no line).
      if (state.parser.section) state.parser.section(child.platform).status = child.status;
    }
    schedule();
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
  box.addEventListener("click", (event) => {
    const summary = event.target.closest("summary");
    if (summary && summary.parentElement.classList.contains("step-group")) {
      state.pinned.add(state.parser.steps[Number(summary.parentElement.dataset.step)]);
    }
  });
  viewBtn.addEventListener("click", () => {
    state.plain = !state.plain;
    viewBtn.textContent = state.plain ? "Steps" : "Plain log";
    viewBtn.setAttribute("aria-pressed", String(state.plain));
    redraw();
  });
  firstError.addEventListener("click", jumpToFailure);
  for (const section of state.parser.sections || []) drawSection(section); // in the build's order, before any line
  connect();
})();
