// Which build step each log line belongs to: BuildKit's `--progress=plain`
// (`#5 [stage-1 2/4] RUN make`, `#5 0.412 ...`, `#5 DONE 1.2s`, `#5 CACHED`,
// `#5 ERROR: ...`) and the classic builder's `Step N/M : INSTRUCTION`.
// A multi-platform build's log (each line of a child's with its `platform`,
// from the WebSocket frame) goes to one section per platform, each with steps
// of its own (PlatformSections).
// Pure (no DOM): the page (log.js) draws what it says, and node runs it in
// tests/test_log_steps.py and tests/test_platform_logs.py on logs captured
// from real farm builds.
"use strict";

(function (exports) {
  const BUILDKIT = /^#(\d+)(?: (.*))?$/;
  const DONE = /^DONE (\d+(?:\.\d+)?)s$/;
  const CLASSIC = /^Step \d+\/\d+ : /;
  const FARM = "[generator] ";
  // BuildKit goes on without the cache when importing it fails (the image's
  // first build has nothing to import): an ERROR there fails nothing.
  const IGNORED_ERROR = /^importing cache manifest from /;

  // Where a line goes. role: "head" (a step's first line: its title), "body",
  // "noise" (what BuildKit repeats when it switches between parallel steps, and
  // blank separators: hidden in the steps view, kept in the plain one) or
  // "outside" (before the first step, between steps, the farm's own lines).
  class StepParser {
    // all: where step ids are counted (a multi-platform log's sections share one
    // list, so that an id names one step of the page); platform: the section's.
    constructor(all = null, platform = null) {
      this.steps = [];
      this._all = all || this.steps;
      this.platform = platform;
      this.failure = null; // {seq, step}: the first line that says the build failed
      this._numbered = new Map(); // BuildKit's #N -> step, for this attempt
      this._classic = null; // the classic step that the next lines belong to
      this._previous = null; // the BuildKit step of the line before
      this._settled = null; // the steps the line being read finished (line())
    }

    // Also says, as `settled`, the steps other than its own that this line
    // finished (a classic step ends at the next step's head or at the build's
    // outcome): a page that drew them running draws them again.
    line(seq, text) {
      this._settled = [];
      return { ...this._line(seq, text), settled: this._settled };
    }

    _line(seq, text) {
      if (text.startsWith(FARM)) return this._farm(seq, text);
      const numbered = BUILDKIT.exec(text);
      if (numbered) return this._buildkit(seq, numbered[1], numbered[2] || "");
      if (CLASSIC.test(text)) {
        this._finishClassic();
        this._classic = this._open(seq, text, "classic");
        this._previous = null;
        return { step: this._classic, role: "head" };
      }
      if (this._classic) {
        const step = this._classic;
        if (text === " ---> Using cache") step.cached = true;
        if (text.startsWith("Successfully built ")) {
          this._finishClassic(); // the build's outcome, not the last step's output
          return { step: null, role: "outside" };
        }
        return { step, role: "body" };
      }
      if (text === "" && this._previous) return { step: this._previous, role: "noise" };
      this._previous = null;
      return { step: null, role: "outside" };
    }

    _buildkit(seq, number, rest) {
      let step = this._numbered.get(number);
      if (!step) {
        step = this._open(seq, "#" + number + " " + rest, "buildkit");
        this._numbered.set(number, step);
        this._previous = step;
        return { step, role: "head" };
      }
      this._previous = step;
      if ("#" + number + " " + rest === step.title) {
        step.resumedAt = seq; // printed again on coming back to it, with its digest
        return { step, role: "noise" };
      }
      if (rest === "..." || (step.resumedAt === seq - 1 && rest.startsWith("sha256:"))) return { step, role: "noise" };
      if (rest === "CACHED") Object.assign(step, { cached: true, finished: true });
      else if (rest === "CANCELED") Object.assign(step, { stopped: true, finished: true });
      else if (DONE.test(rest)) Object.assign(step, { seconds: Number(DONE.exec(rest)[1]), finished: true });
      else if (rest.startsWith("ERROR")) {
        step.finished = true;
        if (IGNORED_ERROR.test(step.title.slice(number.length + 2))) step.ignoredError = true;
        else this._fail(seq, step);
      }
      return { step, role: "body" };
    }

    _farm(seq, text) {
      if (text.startsWith(FARM + "Building ")) {
        // A new attempt: BuildKit numbers its steps from #1 again.
        this._finishClassic();
        this._numbered = new Map();
      } else if (text.startsWith(FARM + "Build failed: ")) {
        // What was still running is where it failed (a timeout, the classic
        // builder, which names no failing step).
        const running = this.steps.filter((step) => !step.finished);
        for (const step of running) this._fail(null, step);
        if (!this.failure) this.failure = { seq, step: running[running.length - 1] || null };
        else if (this.failure.seq === null) this.failure.seq = seq;
        this._classic = null;
      } else if (text.startsWith(FARM + "Cancelled")) {
        for (const step of this.steps) if (!step.finished) this._settle(Object.assign(step, { stopped: true, finished: true }));
        this._classic = null;
      }
      this._previous = null;
      return { step: null, role: "outside" };
    }

    _open(seq, title, kind) {
      const step = {
        id: this._all.length, kind, title, headSeq: seq, resumedAt: null, platform: this.platform,
        seconds: null, cached: false, finished: false, failed: false, stopped: false, ignoredError: false,
      };
      this.steps.push(step);
      if (this._all !== this.steps) this._all.push(step);
      return step;
    }

    _finishClassic() {
      if (this._classic) this._settle(Object.assign(this._classic, { finished: true }));
      this._classic = null;
    }

    _settle(step) {
      if (this._settled) this._settled.push(step);
    }

    _fail(seq, step) {
      Object.assign(step, { failed: true, finished: true });
      if (!this.failure) this.failure = { seq, step };
    }
  }

  // A platform's state, from its child's own farm lines (the page asks the API
  // for the children's statuses once the build has ended).
  const PLATFORM_STATUS = [
    [FARM + "Building ", "building"], [FARM + "Pushing ", "pushing"], [FARM + "Pushed ", "succeeded"],
    [FARM + "Build failed: ", "failed"], [FARM + "Cancelled", "cancelled"],
  ];

  // A multi-platform parent's log: the lines that carry a platform go, without
  // their `[platform] ` prefix, to that platform's section and its own
  // StepParser (each child's BuildKit numbers its steps from #1); the parent's
  // own lines (`[generator] ...`: the outcome, the index) stay outside, in a
  // parser of their own. The same questions as a StepParser's are answered:
  // line() also says the section and the text without the prefix, steps lists
  // every section's, failure is the first line of any that says a build failed.
  class PlatformSections {
    constructor(platforms = []) {
      this.steps = [];
      this.sections = [];
      this._byPlatform = new Map();
      this._outside = new StepParser(this.steps);
      for (const platform of platforms) this.section(platform);
    }

    section(platform) {
      let section = this._byPlatform.get(platform);
      if (!section) {
        section = { platform, parser: new StepParser(this.steps, platform), status: "waiting" };
        this._byPlatform.set(platform, section);
        this.sections.push(section);
      }
      return section;
    }

    line(seq, text, platform) {
      if (!platform) return { ...this._outside.line(seq, text), section: null, text };
      const section = this.section(platform);
      const prefix = "[" + platform + "] ";
      const own = text.startsWith(prefix) ? text.slice(prefix.length) : text;
      for (const [start, status] of PLATFORM_STATUS) if (own.startsWith(start)) section.status = status;
      return { ...section.parser.line(seq, own), section, text: own };
    }

    get failure() {
      let first = null;
      for (const parser of [this._outside, ...this.sections.map((s) => s.parser)]) {
        const failure = parser.failure;
        if (failure && (!first || failure.seq < first.seq)) first = failure;
      }
      return first;
    }
  }

  exports.StepParser = StepParser;
  exports.PlatformSections = PlatformSections;
})(typeof module === "object" ? module.exports : (window.GeneratorSteps = {}));
