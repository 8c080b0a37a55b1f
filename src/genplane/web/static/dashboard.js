/* The dashboard: the key's account, balance and usage over 7/30/90 days.

   GET /v1/usage gives the period's totals per endpoint and per provider, and genplane's
   usage_days the requests by outcome and the provider spend (estimated and wasted: attempts
   paid for and thrown away) per UTC day. Generations per day by outcome, and what they were
   charged, come from the account's generations (GET /v1/content/list, newest first) and the
   catalogue's prices (GET /v1/library/models). Charts are small hand-drawn SVG. */
'use strict';

(function () {
  const G = Genplane;
  const el = G.el;
  const $ = function (id) { return document.getElementById(id); };
  const SVG = 'http://www.w3.org/2000/svg';
  const errorBox = $('error');
  const PAGE = 100;
  const MAX_PAGES = 20; // 2,000 generations: enough for a dashboard, bounded for the server
  let loadSeq = 0;

  function days() {
    const checked = document.querySelector('input[name="days"]:checked');
    return checked ? Number(checked.value) : 7;
  }

  function utcDay(date) { return date.toISOString().slice(0, 10); }

  function dayLabels(n) {
    const out = [];
    const now = new Date();
    for (let i = n - 1; i >= 0; i--) { out.push(utcDay(new Date(now.getTime() - i * 86400000))); }
    return out;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    Object.entries(attrs || {}).forEach(function ([k, v]) { node.setAttribute(k, String(v)); });
    return node;
  }

  /* A round step for 4 grid lines above ``value`` (whole numbers for counts). */
  function niceStep(value, whole) {
    const raw = Math.max(value, whole ? 1 : 0.001) / 4;
    const power = Math.pow(10, Math.floor(Math.log10(raw)));
    for (const s of [1, 2, 2.5, 5, 10]) {
      const step = s * power;
      if (step >= raw && (!whole || Number.isInteger(step))) { return step; }
    }
    return 10 * power;
  }

  function fmt(value, decimals) {
    return decimals ? value.toFixed(decimals) : String(Math.round(value));
  }

  /* Bars per label, stacked by series; vertical (days) or horizontal (endpoints, providers). */
  function stackedChart(options) {
    const labels = options.labels;
    const series = options.series;
    const horizontal = !!options.horizontal;
    const decimals = options.decimals || 0;
    const totals = labels.map(function (_, i) { return series.reduce(function (sum, s) { return sum + (s.values[i] || 0); }, 0); });
    const step = niceStep(Math.max.apply(null, totals.concat([0])), !decimals);
    const max = step * 4;
    const summary = options.title + ': ' + labels.map(function (l, i) { return l + ' ' + fmt(totals[i], decimals); }).filter(function (_, i) { return totals[i] > 0; }).join(', ');
    const figure = el('figure', { className: 'chart', 'data-chart': options.id });
    figure.append(el('figcaption', { id: options.id + '-caption', text: options.title }));
    let root;
    if (!horizontal) {
      const W = 640, H = 240, left = 44, bottom = 28, top = 10, right = 8;
      const plotW = W - left - right, plotH = H - top - bottom;
      root = svg('svg', { viewBox: '0 0 ' + W + ' ' + H, role: 'img', 'aria-label': summary || options.title + ': nothing in this period' });
      for (let t = 0; t <= 4; t++) {
        const y = top + plotH - (plotH * t) / 4;
        root.append(svg('line', { x1: left, x2: W - right, y1: y, y2: y, class: 'grid' }));
        const tick = svg('text', { x: left - 6, y: y + 4, 'text-anchor': 'end', class: 'axis' });
        tick.textContent = fmt(step * t, decimals);
        root.append(tick);
      }
      const slot = plotW / labels.length;
      const barW = Math.max(1, slot * 0.7);
      const every = Math.ceil(labels.length / 8);
      labels.forEach(function (label, i) {
        let y = top + plotH;
        const x = left + i * slot + (slot - barW) / 2;
        series.forEach(function (s) {
          const v = s.values[i] || 0;
          if (v <= 0) { return; }
          const h = (plotH * v) / max;
          y -= h;
          const rect = svg('rect', { x: x.toFixed(2), y: y.toFixed(2), width: barW.toFixed(2), height: Math.max(h, 0.5).toFixed(2), class: 'fill-' + s.key });
          const tip = svg('title', {});
          tip.textContent = label + ': ' + fmt(v, decimals) + ' ' + s.label;
          rect.append(tip);
          root.append(rect);
        });
        if ((labels.length - 1 - i) % every === 0) { // every few days, counted back from today
          const text = svg('text', { x: (left + i * slot + slot / 2).toFixed(2), y: H - 8, 'text-anchor': 'middle', class: 'axis' });
          text.textContent = label.slice(5);
          root.append(text);
        }
      });
    } else {
      const rowH = 26, left = 0, W = 640, labelW = 260, right = 40, top = 4;
      const H = top + labels.length * rowH + 4;
      const plotW = W - labelW - right;
      root = svg('svg', { viewBox: '0 0 ' + W + ' ' + Math.max(H, 30), role: 'img', 'aria-label': summary || options.title + ': nothing in this period' });
      labels.forEach(function (label, i) {
        const y = top + i * rowH;
        const name = svg('text', { x: left, y: y + 17, class: 'axis' });
        name.textContent = label.length > 40 ? label.slice(0, 39) + '…' : label;
        root.append(name);
        let x = labelW;
        series.forEach(function (s) {
          const v = s.values[i] || 0;
          if (v <= 0) { return; }
          const w = (plotW * v) / max;
          const rect = svg('rect', { x: x.toFixed(2), y: y + 4, width: Math.max(w, 0.5).toFixed(2), height: rowH - 8, class: 'fill-' + s.key });
          const tip = svg('title', {});
          tip.textContent = label + ': ' + fmt(v, decimals) + ' ' + s.label;
          rect.append(tip);
          root.append(rect);
          x += w;
        });
        const total = svg('text', { x: (x + 4).toFixed(2), y: y + 17, class: 'axis' });
        total.textContent = fmt(totals[i], decimals);
        root.append(total);
      });
    }
    figure.append(root);
    figure.append(el('ul', { className: 'legend' }, series.map(function (s) {
      return el('li', {}, [el('span', { className: 'fill-' + s.key, 'aria-hidden': 'true' }), document.createTextNode(s.label)]);
    })));
    return figure;
  }

  function table(target, head, rows) {
    const thead = el('thead', {}, [el('tr', {}, head.map(function (h, i) { return el('th', { scope: 'col', className: i ? 'num' : '', text: h }); }))]);
    const tbody = el('tbody', {}, rows.length ? rows.map(function (r) {
      return el('tr', {}, r.map(function (c, i) { return i ? el('td', { className: 'num', text: c }) : el('th', { scope: 'row', text: c }); }));
    }) : [el('tr', {}, [el('td', { colspan: head.length, className: 'help', text: 'Nothing in this period.' })])]);
    const caption = target.querySelector('caption');
    target.replaceChildren();
    if (caption) { target.append(caption); }
    target.append(thead, tbody);
  }

  function stats(target, pairs) {
    target.replaceChildren.apply(target, pairs.map(function ([k, v]) { return el('div', {}, [el('dt', { text: k }), el('dd', { text: v })]); }));
  }

  /* What a succeeded generation was charged, from the catalogue's price (credits). */
  function priceOf(record, prices) {
    const model = prices[record.model_identifier];
    if (!model || record.generation_status !== 'succeeded') { return 0; }
    const delivered = typeof record.generation_output_delivered === 'number' ? record.generation_output_delivered : (record.generation_output_number || 1);
    const p = model.model_pricing;
    if (typeof p === 'number') {
      return model.model_type === 'video' ? p * (record.generation_duration || 0) * delivered : p * delivered;
    }
    if (p && typeof p === 'object') {
      const key = record.generation_resolution + (record.generation_generate_audio ? '_audio' : '');
      const unit = p[key] !== undefined ? p[key] : (p[record.generation_resolution] || 0);
      return unit * (record.generation_duration || 0) * delivered;
    }
    return 0;
  }

  async function generationsSince(since, seq) {
    const out = [];
    let truncated = false;
    for (let page = 0; page < MAX_PAGES; page++) {
      const { body } = await G.api('GET', '/v1/content/list?limit=' + PAGE + '&offset=' + page * PAGE);
      if (seq !== loadSeq) { return null; }
      const rows = body.data.generations || [];
      let older = false;
      rows.forEach(function (g) {
        if (new Date(g.generation_created_at) >= since) { out.push(g); } else { older = true; }
      });
      if (older || rows.length < PAGE) { return { rows: out, truncated: false }; }
      truncated = page === MAX_PAGES - 1;
    }
    return { rows: out, truncated: truncated };
  }

  async function load() {
    const seq = ++loadSeq;
    function thresholdText(thresholds) {
      if (!thresholds.length) { return 'none'; }
      return thresholds.map(function (t) {
        return G.credits(t.threshold) + (t.armed ? ' (armed)' : ' (fired)');
      }).join(', ');
    }
    const n = days();
    G.showError(errorBox, null);
    if (!G.hasKey()) {
      $('charts').replaceChildren(el('p', { className: 'help', text: 'Paste a key to see the charts.' }));
      return;
    }
    $('charts').replaceChildren(el('p', { className: 'help', text: 'Loading…' }));
    try {
      const [account, billing, usage, library] = await Promise.all([
        G.api('GET', '/v1/user/account'),
        G.api('GET', '/v1/user/billing'),
        G.api('GET', '/v1/usage?days=' + n),
        G.api('GET', '/v1/library/models'),
      ]);
      if (seq !== loadSeq) { return; }
      const a = account.body.data, b = billing.body.data, u = usage.body.data;
      stats($('account'), [
        ['Account', a.account_name], ['Account id', a.account_id], ['Plan', b.billing_plan || '–'],
        ['Credit balance', G.credits(b.billing_credit_balance)], ['Currency', b.billing_currency || 'credits'],
        ['Low-balance alerts', thresholdText(b.billing_low_balance_thresholds || [])],
      ]);
      const wasted = (u.usage_providers || []).reduce(function (s, p) { return s + p.wasted_estimated_cost; }, 0);
      stats($('totals'), [
        ['Requests', String(u.usage_total_requests)], ['Succeeded requests', String(u.usage_total_success)],
        ['Client errors', String(u.usage_total_client_errors)], ['Server errors', String(u.usage_total_server_errors)],
        ['Generations', String(u.usage_total_generations)], ['Provider submissions', String(u.usage_total_provider_submissions)],
        ['Estimated spend', G.credits(u.usage_total_estimated_cost)], ['Wasted spend', G.credits(wasted)],
      ]);
      renderEndpoints(u.usage_endpoints || []);
      renderProviders(u.usage_providers || []);
      const prices = {};
      (library.body.data.models || []).forEach(function (m) { prices[m.model_identifier] = m; });
      const labels = dayLabels(n);
      const since = new Date(labels[0] + 'T00:00:00Z');
      const gens = await generationsSince(since, seq);
      if (gens === null || seq !== loadSeq) { return; }
      renderDaily(labels, gens.rows, prices, gens.truncated, u.usage_days || []);
    } catch (err) {
      if (seq === loadSeq) {
        G.showError(errorBox, err);
        $('charts').replaceChildren(el('p', { className: 'help', text: 'No data: see the error above.' }));
      }
    }
  }

  function renderDaily(labels, rows, prices, truncated, usageDays) {
    const index = {};
    labels.forEach(function (l, i) { index[l] = i; });
    const zero = function () { return labels.map(function () { return 0; }); };
    const ok = zero(), failed = zero(), canceled = zero(), running = zero(), spend = zero();
    const reqOk = zero(), req4xx = zero(), req5xx = zero(), wasted = zero();
    usageDays.forEach(function (d) {
      const i = index[d.day];
      if (i === undefined) { return; }
      reqOk[i] = d.success_count; req4xx[i] = d.client_error_count; req5xx[i] = d.server_error_count;
      wasted[i] = d.wasted_estimated_cost;
    });
    rows.forEach(function (g) {
      const i = index[utcDay(new Date(g.generation_created_at))];
      if (i === undefined) { return; }
      const s = g.generation_status;
      if (s === 'succeeded') { ok[i]++; } else if (s === 'failed') { failed[i]++; } else if (s === 'canceled') { canceled[i]++; } else { running[i]++; }
      spend[i] += priceOf(g, prices);
    });
    const charts = $('charts');
    charts.replaceChildren(
      stackedChart({ id: 'generations', title: 'Generations per day (UTC), by outcome', labels: labels, series: [
        { key: 'succeeded', label: 'succeeded', values: ok }, { key: 'failed', label: 'failed', values: failed },
        { key: 'canceled', label: 'canceled', values: canceled }, { key: 'running', label: 'pending or processing', values: running },
      ] }),
      stackedChart({ id: 'spend', title: 'Spend per day (credits, UTC)', labels: labels, decimals: 3, series: [
        { key: 'spend', label: 'charged for succeeded generations', values: spend },
        { key: 'wasted', label: 'wasted (provider attempts paid for and thrown away)', values: wasted },
      ] }),
      stackedChart({ id: 'requests', title: 'Requests per day (UTC), by outcome', labels: labels, series: [
        { key: 'success', label: 'succeeded', values: reqOk }, { key: 'client', label: 'client errors (4xx)', values: req4xx },
        { key: 'server', label: 'server errors (5xx)', values: req5xx },
      ] })
    );
    if (truncated) { charts.append(el('p', { className: 'help', text: 'Only the newest ' + PAGE * MAX_PAGES + ' generations are counted per day.' })); }
    charts.append(el('p', { className: 'help', text: 'Charged spend per day is priced from the catalogue for what was delivered; wasted spend is the providers\' estimated cost of attempts thrown away (failed over, canceled).' }));
    const tableRows = [];
    for (let i = labels.length - 1; i >= 0; i--) {
      tableRows.push([labels[i], String(reqOk[i] + req4xx[i] + req5xx[i]), String(ok[i]), String(failed[i]), String(canceled[i]), String(running[i]), G.credits(spend[i]), G.credits(wasted[i])]);
    }
    table($('daily-table'), ['Day (UTC)', 'Requests', 'Succeeded', 'Failed', 'Canceled', 'In progress', 'Spend', 'Wasted'], tableRows);
  }

  function renderEndpoints(endpoints) {
    const labels = endpoints.map(function (e) { return e.endpoint; });
    $('endpoint-chart').replaceChildren(stackedChart({ id: 'endpoints', title: 'Requests per endpoint, by outcome', horizontal: true, labels: labels, series: [
      { key: 'success', label: 'succeeded', values: endpoints.map(function (e) { return e.success_count; }) },
      { key: 'client', label: 'client errors (4xx)', values: endpoints.map(function (e) { return e.client_error_count; }) },
      { key: 'server', label: 'server errors (5xx)', values: endpoints.map(function (e) { return e.server_error_count; }) },
    ] }));
    table($('endpoints'), ['Endpoint', 'Requests', 'Succeeded', 'Client errors', 'Server errors', 'Error codes'], endpoints.map(function (e) {
      const codes = Object.entries(e.error_codes || {}).map(function ([c, n]) { return c + '×' + n; }).join(', ');
      return [e.endpoint, String(e.total_requests), String(e.success_count), String(e.client_error_count), String(e.server_error_count), codes || '–'];
    }));
  }

  function renderProviders(providers) {
    const labels = providers.map(function (p) { return p.provider; });
    $('provider-chart').replaceChildren(stackedChart({ id: 'providers', title: 'Provider submissions, by outcome', horizontal: true, labels: labels, series: [
      { key: 'used', label: 'used', values: providers.map(function (p) { return p.used_count; }) },
      { key: 'failed', label: 'failed', values: providers.map(function (p) { return p.failed_count; }) },
      { key: 'cancelled', label: 'cancelled', values: providers.map(function (p) { return p.cancelled_count; }) },
      { key: 'discarded', label: 'discarded', values: providers.map(function (p) { return p.discarded_count; }) },
    ] }));
    table($('providers'), ['Provider', 'Submissions', 'Used', 'Failed', 'Cancelled', 'Discarded', 'Estimated spend', 'Wasted spend'], providers.map(function (p) {
      return [p.provider, String(p.total_submissions), String(p.used_count), String(p.failed_count), String(p.cancelled_count), String(p.discarded_count), G.credits(p.total_estimated_cost), G.credits(p.wasted_estimated_cost)];
    }));
  }

  document.querySelectorAll('input[name="days"]').forEach(function (r) { r.addEventListener('change', load); });
  G.bindKeyForm(function () { load(); });
})();
