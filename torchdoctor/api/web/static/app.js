// torchdoctor review page. Every text that comes from the audited code (file names, code,
// messages, diffs, module names) is put in the page with textContent or as a text node, never
// as markup; the server's CSP refuses inline and foreign scripts as a second line.
"use strict";

const KEY_STORE = "torchdoctor.key";
const FINAL = new Set(["done", "failed", "cancelled"]);

const state = {
  key: null,
  checklist: null,
  auditId: null,
  audit: null,
  findings: [],
  rules: new Map(),
  decisions: new Map(),
  stream: null,
  refreshTimer: null,
  shownFinding: null,
  session: null,
};

// ---- DOM helpers ---------------------------------------------------------------------------

const $ = (id) => document.getElementById(id);

/** An element with attributes (never event-handler strings) and children (strings become
 * text nodes). */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") node.textContent = String(value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

function say(id, text) {
  $(id).textContent = text || "";
}

// ---- API -----------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  headers.set("Authorization", `Bearer ${state.key}`);
  const response = await fetch(path, { ...options, headers });
  if (!response.ok) {
    let detail = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      if (body && typeof body.detail === "string") detail = body.detail;
    } catch (_) { /* not JSON */ }
    if (response.status === 401) signOut(detail);
    throw new ApiError(response.status, detail);
  }
  return response;
}

const getJson = async (path) => (await api(path)).json();

async function postJson(path, body, method = "POST") {
  const response = await api(path, {
    method,
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  return response.json();
}

/** Server-sent events over fetch (EventSource cannot send the Authorization header).
 * Calls onEvent(kind, data, id) until the server ends the stream or `signal` aborts. */
async function followEvents(auditId, after, onEvent, signal) {
  const response = await api(`/v1/audits/${encodeURIComponent(auditId)}/events`, {
    headers: { "Last-Event-ID": String(after) },
    signal,
  });
  return readEvents(response, after, onEvent);
}

/** Reads an SSE body: onEvent(kind, data, id) per event; events without an id count too. */
async function readEvents(response, after, onEvent) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let last = after;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return last;
    buffer += value.replace(/\r\n?/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const fields = {};
      for (const line of block.split("\n")) {
        if (!line || line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const name = colon < 0 ? line : line.slice(0, colon);
        const data = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        fields[name] = name in fields ? `${fields[name]}\n${data}` : data;
      }
      if (fields.data === undefined) continue;
      if (fields.id !== undefined) last = Number(fields.id);
      let data = {};
      try { data = JSON.parse(fields.data || "{}"); } catch (_) { /* keep {} */ }
      onEvent(fields.event || "message", data, last);
    }
  }
}

// ---- sign in -------------------------------------------------------------------------------

async function signIn(key) {
  state.key = key;
  try {
    const audits = await getJson("/v1/audits");
    state.checklist = await getJson("/v1/checklist");
    sessionStorage.setItem(KEY_STORE, key);
    $("sign-in").hidden = true;
    $("workspace").hidden = false;
    $("sign-out").hidden = false;
    say("who", `signed in · key ${key.slice(0, 7)}…`);
    say("sign-in-error", "");
    fillPointFilter();
    showAuditList(audits);
    detectSessions();
    return true;
  } catch (err) {
    state.key = null;
    say("sign-in-error", err.status === 401 ? "This API key is unknown or revoked." : err.message);
    return false;
  }
}

function signOut(reason) {
  stopFollowing();
  resetChat();
  sessionStorage.removeItem(KEY_STORE);
  Object.assign(state, { key: null, auditId: null, audit: null, findings: [], session: null });
  state.rules.clear();
  $("workspace").hidden = true;
  $("audit").hidden = true;
  $("sign-in").hidden = false;
  $("sign-out").hidden = true;
  say("who", "");
  clear($("audit-list"));
  say("sign-in-error", reason || "");
  $("api-key").value = "";
  $("api-key").focus();
}

// ---- audits list and submission ------------------------------------------------------------

function showAuditList(audits) {
  const list = clear($("audit-list"));
  $("audit-list-empty").hidden = audits.length > 0;
  for (const audit of audits) {
    list.append(
      el("li", {},
        el("button", {
          type: "button",
          "data-audit": audit.id,
          "aria-current": audit.id === state.auditId ? "true" : "false",
          onclick: () => openAudit(audit.id),
        }, el("code", {}, audit.id.slice(0, 12)), ` · ${audit.state}`)),
    );
  }
}

async function refreshAuditList() {
  showAuditList(await getJson("/v1/audits"));
}

const TEXT_LIMIT = 2 * 1024 * 1024;

/** A folder's files as the JSON submission's `files` map (text files only; binaries and
 * version-control folders are left out, as the server would skip them). */
async function folderFiles(fileList) {
  const files = {};
  let skipped = 0;
  for (const file of fileList) {
    const parts = (file.webkitRelativePath || file.name).split("/");
    const rel = parts.length > 1 ? parts.slice(1).join("/") : parts[0];
    if (parts.some((p) => p === ".git" || p === "__pycache__" || p === "node_modules")) continue;
    if (file.size > TEXT_LIMIT) { skipped += 1; continue; }
    const bytes = new Uint8Array(await file.arrayBuffer());
    try {
      files[rel] = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
    } catch (_) {
      skipped += 1;
    }
  }
  return { files, skipped };
}

function auditOptions() {
  const options = { offline: $("offline").checked, fix: $("want-fixes").checked };
  const ignore = $("ignore").value.split(/[\s,]+/).filter(Boolean);
  if (ignore.length) options.ignore = ignore;
  const command = $("run-command").value.trim();
  if (command) {
    options.run = [command];
    const steps = Number($("steps").value);
    if (steps > 0) options.steps = steps;
    options.probes = $("probes").value;
  }
  return options;
}

async function submitAudit(event) {
  event.preventDefault();
  const folder = $("folder").files;
  const archive = $("archive").files;
  if ((folder.length > 0) === (archive.length > 0)) {
    say("submit-status", "Choose a folder or an archive (one of them).");
    return;
  }
  const button = event.submitter || $("submit-form").querySelector("button");
  button.disabled = true;
  try {
    let accepted;
    if (archive.length > 0) {
      const form = new FormData();
      form.append("archive", archive[0]);
      form.append("options", JSON.stringify(auditOptions()));
      accepted = await (await api("/v1/audits", { method: "POST", body: form })).json();
    } else {
      const { files, skipped } = await folderFiles(folder);
      if (Object.keys(files).length === 0) throw new Error("no text file in this folder");
      accepted = await postJson("/v1/audits", { files, options: auditOptions() });
      if (skipped) say("submit-status", `${skipped} binary or large file(s) left out.`);
    }
    say("submit-status", `Audit ${accepted.id.slice(0, 12)} queued.`);
    $("submit-form").reset();
    await refreshAuditList();
    await openAudit(accepted.id);
  } catch (err) {
    say("submit-status", `Not submitted: ${err.message}`);
  } finally {
    button.disabled = false;
  }
}

// ---- one audit: board, events ---------------------------------------------------------------

function stopFollowing() {
  if (state.stream) state.stream.abort();
  state.stream = null;
  clearTimeout(state.refreshTimer);
}

async function openAudit(auditId) {
  stopFollowing();
  state.auditId = auditId;
  state.findings = [];
  state.decisions.clear();
  for (const button of document.querySelectorAll("#audit-list button")) {
    button.setAttribute("aria-current", button.dataset.audit === auditId ? "true" : "false");
  }
  $("audit").hidden = false;
  say("audit-id", auditId);
  say("audit-error", "");
  say("activity", "");
  $("finding").hidden = true;
  clear($("findings").tBodies[0]);
  clear($("coverage").tBodies[0]);
  drawHypotheses([]);
  clear($("runs")).append(el("p", { class: "help" }, "No run yet."));
  $("approval").hidden = true;
  resetChat();
  try {
    await refreshAudit();
  } catch (err) {
    say("audit-error", err.message);
    return;
  }
  follow(auditId);
}

function follow(auditId) {
  const controller = new AbortController();
  state.stream = controller;
  followEvents(auditId, 0, onAuditEvent, controller.signal)
    .then(() => { if (state.auditId === auditId) scheduleRefresh(0); })
    .catch((err) => {
      if (err.name !== "AbortError") say("audit-error", `Progress stream: ${err.message}`);
    });
}

function onAuditEvent(kind, data) {
  if (kind === "point" || kind === "phase" || kind === "gate" || kind === "state") {
    scheduleRefresh(150);
  }
  const line = describeEvent(kind, data);
  if (line) say("activity", line);
}

function describeEvent(kind, data) {
  if (kind === "state") return `state: ${data.state}${data.error ? ` (${data.error})` : ""}`;
  if (kind === "ingest") return "ingest: static analysis, peer linters and planned runs";
  if (kind === "phase") return `phase ${data.phase}`;
  if (kind === "point") return `point ${data.point}: ${data.findings || 0} finding(s)`;
  if ((kind === "run" || kind === "fix" || kind === "step") && data.message) {
    return `${kind}: ${String(data.message)}`;
  }
  if (kind === "approval") return `approval sent: ${data.approved} approved, ${data.rejected} rejected`;
  if (kind === "finalize") return "finalize: report and ledger";
  return null;
}

function scheduleRefresh(delay) {
  clearTimeout(state.refreshTimer);
  const auditId = state.auditId;
  state.refreshTimer = setTimeout(() => {
    if (state.auditId === auditId) refreshAudit().catch((err) => say("audit-error", err.message));
  }, delay);
}

async function refreshAudit() {
  const auditId = state.auditId;
  const audit = await getJson(`/v1/audits/${encodeURIComponent(auditId)}`);
  if (state.auditId !== auditId) return;
  const previous = state.audit;
  state.audit = audit;
  const badge = $("audit-state");
  badge.textContent = audit.state;
  badge.className = `state ${audit.state}`;
  say("audit-error", audit.error ? `Error: ${audit.error}` : "");
  drawBoard(audit.phases);
  const changed = !previous || previous.id !== audit.id || previous.state !== audit.state;
  if (audit.pending_approval && (changed || $("approval").hidden)) await showApproval();
  if (!audit.pending_approval) $("approval").hidden = true;
  if (audit.findings !== null && (changed || state.findings.length === 0)) await loadResults();
  if (changed) refreshAuditList().catch(() => {});
}

function pointTitle(number) {
  const point = state.checklist.points.find((p) => p.number === number);
  return point ? point.title : `point ${number}`;
}

function drawBoard(phases) {
  const board = clear($("board"));
  for (const phase of phases) {
    const info = state.checklist.phases.find((p) => p.number === phase.phase);
    const status = phase.done ? "done" : phase.started ? "started" : "waiting";
    const points = el("ul", {});
    for (const point of phase.points) {
      const flags = ["point", point.done ? "done" : "", point.findings ? "has-findings" : ""];
      points.append(
        el("li", {
          class: flags.join(" ").trim(),
          "data-point": point.point,
          "data-done": point.done ? "true" : "false",
        },
        el("span", { class: "mark", "aria-hidden": "true" }, point.done ? "✓" : "·"),
        el("span", {}, `${point.point}. ${pointTitle(point.point)}`),
        el("span", { class: "count" }, point.done ? `${point.findings}` : ""),
        el("span", { class: "visually-hidden" },
          point.done ? ` done, ${point.findings} finding(s)` : " not done yet")),
      );
    }
    board.append(
      el("li", { class: `phase ${status}`, "data-phase": phase.phase },
        el("h4", {}, `Phase ${phase.phase}: ${info ? info.title : ""}`,
          el("span", { class: "visually-hidden" }, ` (${status})`)),
        points),
    );
  }
}

// ---- approval --------------------------------------------------------------------------------

async function showApproval() {
  const answer = await getJson(`/v1/audits/${encodeURIComponent(state.auditId)}/approvals`);
  const pending = answer.pending;
  if (!pending) { $("approval").hidden = true; return; }
  const box = clear($("changes"));
  state.decisions.clear();
  for (const change of pending.changes) {
    state.decisions.set(change.finding_id, { approve: null, comment: "" });
    const approve = el("button", { type: "button", class: "quiet approve", "aria-pressed": "false" },
      "Approve");
    const reject = el("button", { type: "button", class: "quiet reject", "aria-pressed": "false" },
      "Reject");
    const commentId = `comment-${change.finding_id}`;
    const comment = el("input", { id: commentId, type: "text", placeholder: "optional" });
    const choose = (value) => {
      state.decisions.get(change.finding_id).approve = value;
      approve.setAttribute("aria-pressed", String(value === true));
      reject.setAttribute("aria-pressed", String(value === false));
    };
    approve.addEventListener("click", () => choose(true));
    reject.addEventListener("click", () => choose(false));
    comment.addEventListener("input", () => {
      state.decisions.get(change.finding_id).comment = comment.value;
    });
    box.append(
      el("article", { class: "change", "data-finding": change.finding_id },
        el("h3", {}, el("span", { class: `sev ${change.severity}` }, change.severity), " ",
          change.title),
        el("p", { class: "help" }, `${change.rule} · ${change.file}:${change.line} · `,
          el("code", {}, change.finding_id)),
        diffTables(change.diff),
        el("div", { class: "decision", role: "group", "aria-label": `Decision on ${change.finding_id}` },
          approve, reject,
          el("div", {}, el("label", { for: commentId }, "Comment"), comment))),
    );
  }
  say("approval-status", "");
  $("approval").hidden = false;
}

async function sendDecisions() {
  const decisions = [];
  for (const [findingId, decision] of state.decisions) {
    if (decision.approve === null) continue;
    decisions.push({ finding_id: findingId, approve: decision.approve, comment: decision.comment });
  }
  if (decisions.length === 0) {
    say("approval-status", "Approve or reject at least one fix first (the others are not written).");
    return;
  }
  $("send-decisions").disabled = true;
  try {
    await postJson(`/v1/audits/${encodeURIComponent(state.auditId)}/approvals`, { decisions });
    const approved = decisions.filter((d) => d.approve).length;
    say("approval-status", `Sent: ${approved} approved, ${decisions.length - approved} rejected. The audit resumes.`);
    $("approval").hidden = true;
    stopFollowing();
    follow(state.auditId);
    scheduleRefresh(300);
  } catch (err) {
    say("approval-status", `Not sent: ${err.message}`);
  } finally {
    $("send-decisions").disabled = false;
  }
}

// ---- diffs, side by side -------------------------------------------------------------------

/** A unified diff as one table per file: old lines on the left, new lines on the right. */
function diffTables(diff) {
  const wrap = el("div", { class: "diff-wrap" });
  let table = null;
  let body = null;
  let oldNo = 0;
  let newNo = 0;
  let dels = [];
  let adds = [];
  const cell = (num, text, kind) => [
    el("td", { class: "num" }, num === null ? "" : String(num)),
    el("td", { class: kind }, text === null ? "" : text),
  ];
  const flush = () => {
    const rows = Math.max(dels.length, adds.length);
    for (let i = 0; i < rows; i += 1) {
      const left = dels[i] || [null, null];
      const right = adds[i] || [null, null];
      body.append(el("tr", {},
        cell(left[0], left[1], left[1] === null ? "" : "del"),
        cell(right[0], right[1], right[1] === null ? "" : "add")));
    }
    dels = [];
    adds = [];
  };
  const startFile = (name) => {
    if (body) flush();
    body = el("tbody", {});
    table = el("table", { class: "diff" },
      el("caption", {}, name),
      el("colgroup", {}, el("col", { class: "num" }), el("col", {}), el("col", { class: "num" }), el("col", {})),
      el("thead", { class: "visually-hidden" }, el("tr", {},
        el("th", { scope: "col" }, "old line"), el("th", { scope: "col" }, "before"),
        el("th", { scope: "col" }, "new line"), el("th", { scope: "col" }, "after"))),
      body);
    wrap.append(table);
  };
  const lines = diff.split("\n");
  for (let i = 0; i < lines.length; i += 1) {
    const line = lines[i];
    if (line.startsWith("--- ") && (lines[i + 1] || "").startsWith("+++ ")) {
      const target = lines[i + 1].slice(4).replace(/^b\//, "");
      const source = line.slice(4).replace(/^a\//, "");
      startFile(target === "/dev/null" ? source : target);
      i += 1;
      continue;
    }
    if (!body) startFile("diff");
    const hunk = /^@@ -(\d+)(?:,\d+)? \+(\d+)(?:,\d+)? @@(.*)$/.exec(line);
    if (hunk) {
      flush();
      oldNo = Number(hunk[1]);
      newNo = Number(hunk[2]);
      body.append(el("tr", { class: "hunk" }, el("td", { colspan: "4" }, line)));
    } else if (line.startsWith("-")) {
      dels.push([oldNo, line.slice(1)]);
      oldNo += 1;
    } else if (line.startsWith("+")) {
      adds.push([newNo, line.slice(1)]);
      newNo += 1;
    } else if (line.startsWith(" ")) {
      flush();
      body.append(el("tr", {}, cell(oldNo, line.slice(1), "ctx"), cell(newNo, line.slice(1), "ctx")));
      oldNo += 1;
      newNo += 1;
    }
  }
  if (body) flush();
  return wrap;
}

// ---- findings, coverage, runs ------------------------------------------------------------

function fillPointFilter() {
  const select = $("filter-point");
  while (select.options.length > 1) select.remove(1);
  for (const point of state.checklist.points) {
    select.append(el("option", { value: point.number }, `${point.number}. ${point.title}`));
  }
}

async function loadResults() {
  const id = encodeURIComponent(state.auditId);
  try {
    state.findings = await getJson(`/v1/audits/${id}/findings`);
  } catch (err) {
    if (err.status === 409) return; // no report yet
    throw err;
  }
  drawFindings();
  const report = await getJson(`/v1/audits/${id}/report`);
  drawCoverage(report.coverage);
  drawHypotheses(report.hypotheses || []);
  drawRuns(await getJson(`/v1/audits/${id}/runs`));
}

function drawFindings() {
  const point = $("filter-point").value;
  const severity = $("filter-severity").value;
  const status = $("filter-status").value;
  const shown = state.findings.filter((f) => (!point || String(f.checkpoint) === point)
    && (!severity || f.severity === severity) && (!status || f.status === status));
  const body = clear($("findings").tBodies[0]);
  for (const finding of shown) {
    body.append(
      el("tr", { "data-finding": finding.id },
        el("td", {}, el("span", { class: `sev ${finding.severity}` }, finding.severity)),
        el("td", {}, String(finding.checkpoint)),
        el("td", {}, el("button", {
          type: "button", "data-open": finding.id, onclick: () => showFinding(finding.id),
        }, finding.title), el("br", {}), el("code", { class: "help" }, finding.rule)),
        el("td", {}, el("code", {}, `${finding.file}:${finding.line}`)),
        el("td", {}, finding.status)),
    );
  }
  say("findings-note", `${shown.length} of ${state.findings.length} finding(s) shown.`);
}

async function ruleInfo(ruleId) {
  if (!state.rules.has(ruleId)) {
    try {
      state.rules.set(ruleId, await getJson(`/v1/rules/${encodeURIComponent(ruleId)}`));
    } catch (_) {
      state.rules.set(ruleId, null);
    }
  }
  return state.rules.get(ruleId);
}

async function showFinding(findingId) {
  const finding = state.findings.find((f) => f.id === findingId);
  if (!finding) return;
  // Cleared before the wait for the rule, so the previous finding's form cannot be used meanwhile.
  const box = clear($("finding"));
  state.shownFinding = findingId;
  const rule = await ruleInfo(finding.rule);
  if (state.shownFinding !== findingId) return; // another finding was opened meanwhile
  const itemIds = rule ? rule.items : [];
  const items = state.checklist.items.filter((i) => itemIds.includes(i.id));
  box.append(
    el("h3", {}, el("span", { class: `sev ${finding.severity}` }, finding.severity), " ", finding.title),
    el("dl", {},
      el("dt", {}, "Id"), el("dd", {}, el("code", {}, finding.id)),
      el("dt", {}, "Rule"), el("dd", {}, el("code", {}, finding.rule),
        rule ? ` · ${rule.title}` : ""),
      el("dt", {}, "Point"), el("dd", {}, `${finding.checkpoint}. ${pointTitle(finding.checkpoint)} (phase ${finding.phase})`),
      el("dt", {}, "Where"), el("dd", {}, el("code", {}, `${finding.file}:${finding.line}`)),
      el("dt", {}, "Status"), el("dd", { "data-status": finding.status }, finding.status),
      el("dt", {}, "Coverage item"), el("dd", {},
        items.length ? items.map((i) => `${i.id} ${i.title}`).join(" · ") : "—")),
  );
  if (rule && rule.doc) {
    box.append(el("h4", {}, "About this rule"), el("p", { class: "doc" }, rule.doc));
  }
  box.append(el("h4", {}, `Evidence (${finding.evidence.length})`));
  const evidence = el("ul", { class: "evidence" });
  for (const item of finding.evidence) {
    const where = item.file ? ` — ${item.file}${item.line ? `:${item.line}` : ""}` : "";
    evidence.append(el("li", {},
      el("p", {}, el("strong", {}, `${item.source}${item.source_version ? ` ${item.source_version}` : ""}`),
        ` (${item.kind})${where}`),
      el("p", {}, item.message),
      item.excerpt ? el("pre", { class: "excerpt", "aria-label": "numbered code excerpt" }, item.excerpt) : null));
  }
  box.append(evidence);
  if (finding.fix) {
    box.append(
      el("h4", {}, `Proposed fix (${finding.fix.origin}, ${finding.fix.verified ? "verified" : "not verified"})`),
      diffTables(finding.fix.diff));
    const steps = el("ul", { class: "verification" });
    for (const step of finding.fix.verification) {
      steps.append(el("li", {},
        el("span", { class: step.ok ? "ok" : "no", "aria-label": step.ok ? "passed" : "failed" },
          step.ok ? "✓ " : "✗ "),
        step.step, step.detail ? ` — ${step.detail}` : ""));
    }
    if (finding.fix.verification.length) box.append(el("h4", {}, "Verification"), steps);
  }
  box.append(statusForm(finding));
  box.hidden = false;
  box.focus();
}

function statusForm(finding) {
  const select = el("select", { id: "status-choice" },
    el("option", { value: "wont-fix" }, "won't fix"),
    el("option", { value: "needs-human" }, "needs a human"));
  const reason = el("input", { id: "status-reason", type: "text", required: true, maxlength: "2000" });
  const note = el("p", { class: "status", role: "status" });
  const form = el("form", { class: "decision" },
    el("div", {}, el("label", { for: "status-choice" }, "Mark as"), select),
    el("div", {}, el("label", { for: "status-reason" }, "Reason (kept in ISSUES.md)"), reason),
    el("button", { type: "submit" }, "Save"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const changed = await postJson(
        `/v1/audits/${encodeURIComponent(state.auditId)}/findings/${encodeURIComponent(finding.id)}`,
        { status: select.value, reason: reason.value }, "PATCH");
      state.findings = state.findings.map((f) => (f.id === changed.id ? changed : f));
      drawFindings();
      await showFinding(changed.id);
    } catch (err) {
      note.textContent = `Not saved: ${err.message}`;
    }
  });
  return el("div", {}, el("h4", {}, "Your decision"), form, note);
}

function drawCoverage(entries) {
  const body = clear($("coverage").tBodies[0]);
  for (const entry of entries) {
    const item = state.checklist.items.find((i) => i.id === entry.item);
    body.append(el("tr", {},
      el("td", {}, el("strong", {}, entry.item), item ? ` ${item.title}` : ""),
      el("td", { class: `verdict-${entry.verdict}` }, entry.verdict),
      el("td", {}, entry.how),
      el("td", {}, entry.reason)));
  }
}

/** The model's claims no tool backed: shown apart from the findings, as text only. */
function drawHypotheses(hypotheses) {
  $("hypotheses-card").hidden = hypotheses.length === 0;
  const body = clear($("hypotheses").tBodies[0]);
  for (const h of hypotheses) {
    body.append(el("tr", { "data-hypothesis": h.id },
      el("td", {}, el("span", { class: `sev ${h.severity}` }, h.severity)),
      el("td", {}, String(h.checkpoint)),
      el("td", {}, el("strong", {}, h.title), h.explanation ? ` ${h.explanation}` : "",
        el("br", {}), el("code", { class: "help" }, h.rule)),
      el("td", {}, el("code", {}, `${h.file}:${h.line}`)),
      el("td", {}, h.source)));
  }
}

async function drawRuns(runs) {
  const box = clear($("runs"));
  if (runs.length === 0) {
    box.append(el("p", { class: "help" }, "No instrumented run in this audit (give a command to run)."));
    return;
  }
  for (const run of runs) {
    const plots = el("div", { class: "plots" });
    const diagram = el("div", { class: "dataflow" });
    box.append(el("section", { class: "run", "data-run": run.index },
      el("h3", {}, el("code", {}, run.command), ` — ${run.outcome}`),
      el("p", {}, run.summary),
      run.notes.length ? el("ul", {}, run.notes.map((n) => el("li", {}, n))) : null,
      plots,
      run.dataflow_mermaid ? el("h4", {}, "Data flow of one step") : null,
      diagram,
      run.dataflow_mermaid ? el("details", {}, el("summary", {}, "Mermaid source"),
        el("pre", {}, run.dataflow_mermaid)) : null));
    for (const kind of run.plots) {
      const path = `/v1/audits/${encodeURIComponent(state.auditId)}/runs/${run.index}/${kind}.svg`;
      const blob = await (await api(path)).blob();
      plots.append(el("img", {
        src: URL.createObjectURL(blob),
        alt: `${kind === "loss" ? "Loss" : "Gradient norm"} per step of ${run.command}`,
        "data-plot": kind,
      }));
    }
    if (run.dataflow_mermaid) {
      diagramCount += 1;
      drawMermaid(diagram, run.dataflow_mermaid, `flow-${diagramCount}`).catch((err) => {
        diagram.append(el("p", { class: "error" }, `Diagram not drawn: ${err.message}`));
      });
    }
  }
}

let mermaidReady = null;
let diagramCount = 0;

/** Mermaid is loaded on first use (it is large) from this server, never a CDN. */
function loadMermaid() {
  if (!mermaidReady) {
    mermaidReady = new Promise((resolve, reject) => {
      const script = el("script", { src: "/static/vendor/mermaid.tiny.js" });
      script.addEventListener("load", () => {
        window.mermaid.initialize({
          startOnLoad: false,
          securityLevel: "strict",
          theme: "neutral",
          htmlLabels: false,
          flowchart: { htmlLabels: false },
        });
        resolve(window.mermaid);
      });
      script.addEventListener("error", () => reject(new Error("mermaid could not be loaded")));
      document.head.append(script);
    });
  }
  return mermaidReady;
}

/** The diagram is drawn as an image (an SVG in an <img>): nothing in it can run. Mermaid's
 * output is HTML-flavoured (`<br>` in labels); parsed as HTML and serialised as XML it becomes
 * a well-formed SVG document an <img> accepts. */
async function drawMermaid(container, text, id) {
  const mermaid = await loadMermaid();
  const { svg } = await mermaid.render(id, text);
  const parsed = new DOMParser().parseFromString(svg, "text/html").querySelector("svg");
  if (!parsed) throw new Error("mermaid drew nothing");
  const box = (parsed.getAttribute("viewBox") || "").split(/\s+/).map(Number);
  const image = el("img", {
    alt: "Data-flow diagram of one training step (its Mermaid source is below)",
    "data-diagram": id,
  });
  if (box.length === 4 && box[2] > 0) {
    parsed.setAttribute("width", String(Math.ceil(box[2])));
    parsed.setAttribute("height", String(Math.ceil(box[3])));
    image.width = Math.ceil(box[2]);
  }
  const xml = new XMLSerializer().serializeToString(parsed);
  image.src = URL.createObjectURL(new Blob([xml], { type: "image/svg+xml" }));
  await image.decode();
  container.append(image);
}

// ---- downloads -----------------------------------------------------------------------------

async function download(kind) {
  if (!state.auditId) return;
  const id = encodeURIComponent(state.auditId);
  const short = state.auditId.slice(0, 12);
  const [path, name] = kind === "patch"
    ? [`/v1/audits/${id}/patch`, `torchdoctor-${short}.patch`]
    : [`/v1/audits/${id}/report?format=${kind}`,
      `torchdoctor-${short}.${{ json: "json", sarif: "sarif", markdown: "md" }[kind]}`];
  try {
    const blob = await (await api(path)).blob();
    const url = URL.createObjectURL(blob);
    const link = el("a", { href: url, download: name, hidden: true });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (err) {
    say("audit-error", `Download failed: ${err.message}`);
  }
}

// ---- chat (the session API) ----------------------------------------------------------------

function resetChat() {
  if (state.session && state.session.stream) state.session.stream.abort();
  state.session = null;
  clear($("chat-log"));
  say("chat-status", "");
}

/** One block of a session message (text, table, diff, code), rendered as text. */
function chatBlock(block) {
  if (block.kind === "table") {
    return el("table", { class: "grid" },
      block.title ? el("caption", {}, block.title) : null,
      el("thead", {}, el("tr", {}, block.columns.map((c) => el("th", { scope: "col" }, c)))),
      el("tbody", {}, block.rows.map((row) => el("tr", {}, row.map((c) => el("td", {}, c))))));
  }
  if (block.kind === "diff") {
    return el("div", {}, block.title ? el("p", {}, block.title) : null, diffTables(block.diff));
  }
  if (block.kind === "code") {
    return el("div", {}, block.title ? el("p", {}, block.title) : null, el("pre", {}, block.text));
  }
  return el("p", { class: block.tone === "error" ? "error" : block.tone === "note" ? "help" : "" },
    String(block.text ?? ""));
}

function chatMessage(message) {
  if (state.session) {
    if (state.session.shown.has(message.id)) return;
    state.session.shown.add(message.id);
  }
  const mine = message.role === "user";
  $("chat-log").append(el("li", { class: mine ? "you" : "td", "data-message": message.id },
    el("span", { class: "who" }, mine ? "you" : "torchdoctor"),
    (message.blocks || []).map(chatBlock)));
  $("chat-log").scrollTop = $("chat-log").scrollHeight;
}

/** The audit's session, opened on first use; its event stream brings the answers of long
 * commands (run, fix, apply) when their audit ends. */
async function sessionFor(auditId) {
  if (!state.session || state.session.view.audit_id !== auditId) {
    const view = await postJson("/v1/sessions", { audit_id: auditId });
    const stream = new AbortController();
    state.session = { view, stream, shown: new Set() };
    followSession(view.id, stream.signal).catch((err) => {
      if (err.name !== "AbortError") say("chat-status", `Chat stream: ${err.message}`);
    });
  }
  return state.session.view;
}

async function followSession(sessionId, signal) {
  const response = await api(`/v1/sessions/${encodeURIComponent(sessionId)}/events`, { signal });
  await readEvents(response, 0, (kind, data) => {
    if (kind === "message") chatMessage(data);
    else if (kind === "state") say("chat-status", data.busy ? "working…" : "");
    else if (kind === "progress") {
      const line = describeEvent(data.kind, data.data || {});
      if (line) say("chat-status", line);
    }
  });
}

async function sendChat(event) {
  event.preventDefault();
  const input = $("chat-input");
  const text = input.value.trim();
  if (!text || !state.auditId) return;
  input.value = "";
  try {
    const session = await sessionFor(state.auditId);
    const added = await postJson(
      `/v1/sessions/${encodeURIComponent(session.id)}/messages`, { text });
    for (const message of added) chatMessage(message);
    say("chat-status", "");
    scheduleRefresh(200);
  } catch (err) {
    say("chat-status", `Chat: ${err.message}`);
  }
}

/** The chat panel shows only where the server has the session API. */
async function detectSessions() {
  try {
    await api("/v1/sessions");
    $("chat").hidden = false;
  } catch (_) {
    $("chat").hidden = true;
  }
}

// ---- wiring ----------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("sign-in-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = $("api-key").value.trim();
    if (key) await signIn(key);
  });
  $("sign-out").addEventListener("click", () => signOut(""));
  $("submit-form").addEventListener("submit", submitAudit);
  $("send-decisions").addEventListener("click", sendDecisions);
  $("filters").addEventListener("change", drawFindings);
  $("chat-form").addEventListener("submit", sendChat);
  for (const button of document.querySelectorAll("[data-download]")) {
    button.addEventListener("click", () => download(button.dataset.download));
  }
  const saved = sessionStorage.getItem(KEY_STORE);
  if (saved) signIn(saved);
  else $("api-key").focus();
});
