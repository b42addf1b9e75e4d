// skeleton web: the page's script. Every value from a node (ids, versions, GPU names, log
// lines) is set as textContent, never parsed as markup. No inline script: the server's
// Content-Security-Policy allows only this file and uPlot, from this origin.
"use strict";

(function () {
  const REFRESH_MS = 3000;   // nodes, runs, jobs, charts
  const LOG_MS = 2000;       // the log pane
  const MAX_LOG_LINES = 1000;
  const LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"];

  const state = {
    range: "1h",
    charts: new Map(),   // node id -> uPlot instance (tests read their data here)
    logCursor: 0,
    logNode: "",
    logLevel: "",
    nodeIds: [],
    xRange: [Date.now() / 1000 - 3600, Date.now() / 1000],
  };
  window.skeletonWeb = state;

  async function get(path) {
    const response = await fetch(path, { credentials: "same-origin", cache: "no-store" });
    if (!response.ok) {
      throw new Error("HTTP " + response.status);
    }
    return response.json();
  }

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) {
      node.textContent = String(text);
    }
    if (cls) {
      node.className = cls;
    }
    return node;
  }

  function cell(row, text, cls) {
    row.appendChild(el("td", text === null || text === undefined ? "-" : text, cls));
  }

  function pct(fraction) {
    return typeof fraction === "number" ? (fraction * 100).toFixed(0) + "%" : null;
  }

  function num(value, digits) {
    return typeof value === "number" ? value.toFixed(digits) : null;
  }

  function age(seconds) {
    if (typeof seconds !== "number") {
      return null;
    }
    if (seconds < 120) {
      return seconds.toFixed(0) + "s ago";
    }
    if (seconds < 7200) {
      return (seconds / 60).toFixed(0) + "m ago";
    }
    return (seconds / 3600).toFixed(1) + "h ago";
  }

  function bytes(size) {
    if (typeof size !== "number") {
      return "";
    }
    const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let i = 0;
    while (size >= 1024 && i < units.length - 1) {
      size /= 1024;
      i += 1;
    }
    return " of " + size.toFixed(i ? 1 : 0) + " " + units[i];
  }

  function when(iso) {
    if (typeof iso !== "string") {
      return null;
    }
    const at = new Date(iso);
    return isNaN(at.getTime()) ? null : at.toLocaleString();
  }

  function setStatus(text, cls) {
    const status = document.getElementById("status");
    status.textContent = text;
    status.className = "status " + (cls || "");
  }

  function registryStatus(registry) {
    if (!registry || registry.state === "none") {
      setStatus("no registry: the config's nodes, no history", "none");
    } else if (registry.state === "down") {
      setStatus("registry down (retrying): " + (registry.error || "unreachable"), "down");
    } else {
      setStatus("registry up", "");
    }
  }

  // ---------------------------------------------------------------- the node table

  function gpuText(gpus) {
    if (!Array.isArray(gpus) || gpus.length === 0) {
      return null;
    }
    return gpus.map(function (g, i) {
      const used = typeof g.mem_used_mib === "number" && typeof g.mem_total_mib === "number"
        && g.mem_total_mib > 0 ? " mem " + pct(g.mem_used_mib / g.mem_total_mib) : "";
      const util = typeof g.util === "number" ? g.util.toFixed(0) + "%" : "-";
      return (g.name || "gpu" + i) + " " + util + used;
    }).join(", ");
  }

  function renderNodes(data) {
    registryStatus(data.registry);
    const rows = data.nodes.map(function (n) {
      const tr = document.createElement("tr");
      tr.dataset.node = n.id;
      cell(tr, n.id);
      cell(tr, n.host);
      cell(tr, (n.roles || []).join(","));
      cell(tr, n.state);
      cell(tr, n.daemon_state, n.daemon_state === "running" ? "ok" : "warn");
      cell(tr, age(n.seen_ago) === null ? null : age(n.seen_ago) + (n.stale ? " (stale)" : ""),
        n.stale ? "bad" : "");
      cell(tr, num(n.load1, 2));
      cell(tr, pct(n.cpu_busy));
      cell(tr, pct(n.mem_used) === null ? null : pct(n.mem_used) + bytes(n.mem_total));
      cell(tr, pct(n.disk_used) === null ? null : pct(n.disk_used) + bytes(n.disk_total));
      cell(tr, gpuText(n.gpus));
      cell(tr, n.jobs_running);
      cell(tr, n.code_version ? n.code_version.slice(0, 12) : null);
      cell(tr, n.logs, n.logs && n.logs !== "following" ? "warn" : "");
      return tr;
    });
    document.querySelector("#nodes tbody").replaceChildren(...rows);
    const ids = data.nodes.map(function (n) { return n.id; });
    if (ids.join("\n") !== state.nodeIds.join("\n")) {
      state.nodeIds = ids;
      const select = document.getElementById("log-node");
      const options = [el("option", "all")];
      options[0].value = "";
      ids.forEach(function (id) {
        const option = el("option", id);
        option.value = id;
        options.push(option);
      });
      select.replaceChildren(...options);
      select.value = ids.indexOf(state.logNode) >= 0 ? state.logNode : "";
    }
  }

  // ---------------------------------------------------------------- the charts

  function chartOptions() {
    return {
      width: 440,
      height: 180,
      // The whole range, not just the span of the data (one point would span years).
      scales: {
        x: { time: true, range: function () { return state.xRange; } },
        load: { auto: true },
        pct: { auto: false, range: [0, 100] },
      },
      series: [
        {},
        { label: "load", scale: "load", stroke: "#1f77b4", width: 1.5 },
        { label: "mem %", scale: "pct", stroke: "#2ca02c", width: 1.5 },
        { label: "GPU %", scale: "pct", stroke: "#d62728", width: 1.5 },
        { label: "GPU mem %", scale: "pct", stroke: "#9467bd", width: 1.5 },
      ],
      axes: [{}, { scale: "load" }, { scale: "pct", side: 1, grid: { show: false } }],
    };
  }

  function hundred(values) {
    return values.map(function (v) { return typeof v === "number" ? v * 100 : null; });
  }

  function renderHistory(data) {
    state.xRange = [data.now - data.seconds, data.now];
    const box = document.getElementById("charts");
    const seen = new Set();
    state.nodeIds.forEach(function (id) {
      const cols = data.nodes[id];
      seen.add(id);
      let holder = box.querySelector('[data-node="' + CSS.escape(id) + '"]');
      if (!holder) {
        holder = el("div", null, "chart");
        holder.dataset.node = id;
        holder.appendChild(el("h3", id));
        holder.appendChild(el("div", null, "plot"));
        box.appendChild(holder);
      }
      const plot = holder.querySelector(".plot");
      if (!cols || cols.t.length === 0) {
        const chart = state.charts.get(id);
        if (chart) {
          chart.destroy();
          state.charts.delete(id);
        }
        plot.replaceChildren(el("p", "no history in this range", "muted"));
        return;
      }
      const series = [cols.t, cols.load1, hundred(cols.mem_used), cols.gpu_util,
        hundred(cols.gpu_mem_used)];
      const chart = state.charts.get(id);
      if (chart) {
        chart.setData(series);
      } else {
        plot.replaceChildren();
        state.charts.set(id, new window.uPlot(chartOptions(), series, plot));
      }
    });
    Array.from(box.children).forEach(function (holder) {
      if (!seen.has(holder.dataset.node)) {
        const chart = state.charts.get(holder.dataset.node);
        if (chart) {
          chart.destroy();
          state.charts.delete(holder.dataset.node);
        }
        holder.remove();
      }
    });
  }

  // ---------------------------------------------------------------- runs and jobs

  function renderRuns(data) {
    const rows = data.runs.map(function (r) {
      const tr = document.createElement("tr");
      cell(tr, r.id);
      cell(tr, when(r.started_at));
      cell(tr, r.who);
      cell(tr, r.operation);
      cell(tr, r.node_count);
      cell(tr, r.ok_count);
      cell(tr, r.failed_count, r.failed_count ? "bad" : "");
      cell(tr, r.error_count, r.error_count ? "bad" : "");
      cell(tr, r.exit_code, r.exit_code ? "bad" : "ok");
      cell(tr, num(r.duration, 1) === null ? null : num(r.duration, 1) + " s");
      return tr;
    });
    document.querySelector("#runs tbody").replaceChildren(...rows);
  }

  function renderJobs(data) {
    const queue = data.queue || {};
    document.getElementById("queue").textContent = queue.state === "none" ? "(no queue)"
      : queue.state === "down" ? "(queue unreachable: " + (queue.error || "") + ")" : "";
    const rows = data.jobs.map(function (j) {
      const tr = document.createElement("tr");
      cell(tr, j.id);
      cell(tr, j.engine);
      cell(tr, j.state, j.state === "failed" ? "bad" : "");
      cell(tr, j.node);
      cell(tr, when(j.submitted_at));
      cell(tr, j.attempts_made + "/" + j.max_attempts);
      cell(tr, j.label);
      return tr;
    });
    document.querySelector("#jobs tbody").replaceChildren(...rows);
  }

  // ---------------------------------------------------------------- the log pane

  async function pollLogs() {
    const params = new URLSearchParams({ after: String(state.logCursor) });
    if (state.logNode) {
      params.set("node", state.logNode);
    }
    if (state.logLevel) {
      params.set("level", state.logLevel);
    }
    const asked = { node: state.logNode, level: state.logLevel };
    const data = await get("/api/logs?" + params.toString());
    if (asked.node !== state.logNode || asked.level !== state.logLevel) {
      return; // the filter changed meanwhile: this answer is for the old one
    }
    const pane = document.getElementById("logs");
    const atBottom = pane.scrollHeight - pane.scrollTop - pane.clientHeight < 40;
    data.lines.forEach(function (line) {
      const row = el("div", null, LEVELS.indexOf(line.level) >= 0 ? line.level : "");
      row.appendChild(el("span", line.node + ": ", "node"));
      row.appendChild(document.createTextNode(line.text));
      pane.appendChild(row);
    });
    while (pane.childElementCount > MAX_LOG_LINES) {
      pane.firstElementChild.remove();
    }
    if (atBottom) {
      pane.scrollTop = pane.scrollHeight;
    }
    state.logCursor = data.next;
    document.getElementById("log-note").textContent = data.dropped
      ? "(some lines were dropped: the pane fell behind)" : "";
  }

  function resetLogs() {
    state.logNode = document.getElementById("log-node").value;
    state.logLevel = document.getElementById("log-level").value;
    state.logCursor = 0;
    document.getElementById("logs").replaceChildren();
    pollLogs().catch(failed);
  }

  // ---------------------------------------------------------------- refresh

  function failed(error) {
    setStatus("server unreachable (retrying): " + error.message, "down");
  }

  async function refreshHistory() {
    renderHistory(await get("/api/history?range=" + encodeURIComponent(state.range)));
  }

  async function refresh() {
    try {
      renderNodes(await get("/api/nodes"));
      await refreshHistory();
      renderRuns(await get("/api/runs"));
      renderJobs(await get("/api/jobs"));
      document.getElementById("updated").textContent =
        "updated " + new Date().toLocaleTimeString();
    } catch (error) {
      failed(error);
    }
  }

  function loop(fn, ms) {
    async function tick() {
      try {
        await fn();
      } catch (error) {
        failed(error);
      }
      window.setTimeout(tick, ms);
    }
    tick();
  }

  document.getElementById("range").addEventListener("click", function (event) {
    const range = event.target.dataset ? event.target.dataset.range : undefined;
    if (!range) {
      return;
    }
    state.range = range;
    document.querySelectorAll("#range button").forEach(function (b) {
      b.classList.toggle("on", b.dataset.range === range);
    });
    refreshHistory().catch(failed);
  });
  document.getElementById("log-node").addEventListener("change", resetLogs);
  document.getElementById("log-level").addEventListener("change", resetLogs);

  loop(refresh, REFRESH_MS);
  loop(pollLogs, LOG_MS);
})();
