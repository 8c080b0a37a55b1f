/* The Playground: models from GET /v1/library/models, a form generated from the chosen
   model's schema, the live estimate, the create, a live status (GET /v1/content/{id} with
   Prefer: wait), the result inline, and the recent list with cancel and delete. */
'use strict';

(function () {
  const G = Genplane;
  const el = G.el;
  const $ = function (id) { return document.getElementById(id); };
  const errorBox = $('error');
  const select = $('model-select');
  const search = $('model-search');
  const fieldsBox = $('fields');
  const advanced = $('advanced');
  const advancedBox = $('advanced-fields');
  const submit = $('submit');
  const estimateOut = $('estimate');
  const statusBox = $('status');
  const resultBox = $('result');
  const recentBody = document.querySelector('#recent tbody');
  const TERMINAL = ['succeeded', 'failed', 'canceled'];

  let models = [];
  let current = null;
  let estimateTimer = 0;
  let estimateSeq = 0;
  let tracking = null; // {id, abort}

  const SPECIFIC = {
    generation_seed: { label: 'Seed', type: 'number', min: 0, max: 4294967295, step: 1, help: 'Same seed, same prompt: the same output.' },
    generation_negative_prompt: { label: 'Negative prompt', type: 'textarea', maxlength: 2000, help: 'What to avoid.' },
    generation_guidance_scale: { label: 'Guidance scale', type: 'number', min: 0, max: 50, step: 0.1, help: 'Prompt adherence, 0 to 50.' },
    generation_num_inference_steps: { label: 'Inference steps', type: 'number', min: 1, max: 200, step: 1, help: 'Sampling steps, 1 to 200.' }
  };

  function fail(err) { G.showError(errorBox, err); }
  function clearError() { G.showError(errorBox, null); }

  // -- models ---------------------------------------------------------------------------------

  async function loadModels() {
    select.disabled = true;
    try {
      const { body } = await G.api('GET', '/v1/library/models');
      models = body.data.models || [];
      clearError();
      showModels();
      const wanted = new URLSearchParams(location.hash.slice(1)).get('model');
      if (wanted && models.some(function (m) { return m.model_identifier === wanted; })) {
        select.value = wanted;
        chooseModel(wanted);
      }
    } catch (err) {
      models = [];
      showModels();
      fail(err);
    }
  }

  function mediaFilter() {
    const checked = document.querySelector('input[name="media"]:checked');
    return checked ? checked.value : '';
  }

  function showModels() {
    const media = mediaFilter();
    const words = search.value.trim().toLowerCase().split(/\s+/).filter(Boolean);
    const shown = models.filter(function (m) {
      if (media && m.model_type !== media) { return false; }
      const hay = (m.model_identifier + ' ' + m.model_type + ' ' + (m.model_supported_provider || []).join(' ')).toLowerCase();
      return words.every(function (w) { return hay.includes(w); });
    });
    const keep = select.value;
    select.replaceChildren();
    shown.forEach(function (m) {
      select.append(el('option', { value: m.model_identifier, text: m.model_identifier + ' (' + m.model_type + ')' }));
    });
    if (!G.hasKey()) {
      select.append(el('option', { value: '', text: 'Paste a key to load the models' }));
    }
    select.disabled = shown.length === 0;
    if (shown.some(function (m) { return m.model_identifier === keep; })) { select.value = keep; }
    $('model-count').textContent = G.hasKey() ? shown.length + ' of ' + models.length + ' models shown.' : '';
  }

  // -- the form -------------------------------------------------------------------------------

  function fieldWrap(id, label, control, help) {
    const parts = [el('label', { for: id, text: label }), control];
    if (help) {
      control.setAttribute('aria-describedby', id + '-help');
      parts.push(el('p', { id: id + '-help', className: 'help', text: help }));
    }
    return el('div', { className: 'field' }, parts);
  }

  function selectOf(id, values, labels) {
    const s = el('select', { id: id, name: id.slice(2) });
    values.forEach(function (v, i) { s.append(el('option', { value: String(v), text: labels ? labels[i] : String(v) })); });
    return s;
  }

  function chooseModel(identifier) {
    current = models.find(function (m) { return m.model_identifier === identifier; }) || null;
    fieldsBox.replaceChildren();
    advancedBox.replaceChildren();
    estimateOut.textContent = '';
    if (!current) {
      submit.disabled = true;
      advanced.hidden = true;
      fieldsBox.append(el('p', { className: 'help', text: 'Choose a model first.' }));
      $('model-link').replaceChildren();
      return;
    }
    history.replaceState(null, '', '#model=' + encodeURIComponent(identifier).replace(/%2F/g, '/'));
    $('model-link').replaceChildren(el('a', { href: '/models/' + identifier, text: 'Fields, prices and examples of ' + identifier }));
    const s = current.schema || {};
    const video = current.model_type === 'video';
    fieldsBox.append(fieldWrap('f-generation_prompt', 'Prompt', el('textarea', { id: 'f-generation_prompt', name: 'generation_prompt', required: true, maxlength: 5000, rows: 3, placeholder: 'A lighthouse on a cliff at dusk' })));
    if (s.generation_input_file) {
      fieldsBox.append(fieldWrap('f-generation_input_file', 'Input image URLs' + (s.generation_input_file_required ? ' (required)' : ' (optional)'),
        el('textarea', { id: 'f-generation_input_file', name: 'generation_input_file', rows: 2, required: !!s.generation_input_file_required, placeholder: 'https://example.com/input.png' }),
        'One public http(s) URL per line, JPEG, PNG or WebP. The /v1 contract takes files by URL: put a local file on a host the server can reach first.'));
    }
    if (s.generation_input_file_last_content) {
      fieldsBox.append(fieldWrap('f-generation_input_file_last_content', 'End-frame image URL (optional)',
        el('input', { id: 'f-generation_input_file_last_content', name: 'generation_input_file_last_content', type: 'url', placeholder: 'https://example.com/last.png' })));
    }
    fieldsBox.append(fieldWrap('f-generation_ratio', 'Aspect ratio', selectOf('f-generation_ratio', s.generation_ratio || [])));
    fieldsBox.append(fieldWrap('f-generation_output_format', 'Output format', selectOf('f-generation_output_format', s.generation_output_format || [])));
    const max = s.generation_output_number || 1;
    const counts = Array.from({ length: max }, function (_, i) { return i + 1; });
    fieldsBox.append(fieldWrap('f-generation_output_number', 'Number of outputs', selectOf('f-generation_output_number', counts)));
    if (video) {
      fieldsBox.append(fieldWrap('f-generation_duration', 'Duration', selectOf('f-generation_duration', s.generation_duration || [], (s.generation_duration || []).map(function (d) { return d + ' s'; }))));
      fieldsBox.append(fieldWrap('f-generation_resolution', 'Resolution', selectOf('f-generation_resolution', s.generation_resolution || [])));
      if (s.generation_generate_audio) {
        const box = el('input', { id: 'f-generation_generate_audio', name: 'generation_generate_audio', type: 'checkbox' });
        fieldsBox.append(el('div', { className: 'field check' }, [el('label', { for: 'f-generation_generate_audio' }, [box, document.createTextNode(' Generate audio')])]));
      }
    }
    // Advanced: the provider chain and the model-specific fields.
    const providers = current.model_supported_provider || [];
    const orders = ['fastest'].concat(providers);
    if (providers.length > 1) { orders.push(providers.join(', ')); }
    advancedBox.append(fieldWrap('f-generation_provider_order', 'Provider order', selectOf('f-generation_provider_order', orders),
      '“fastest” ranks the providers by their recent health; a list is tried in that order.'));
    (current.specific_schema || []).forEach(function (name) {
      const spec = SPECIFIC[name] || { label: name, type: 'text' };
      const id = 'f-' + name;
      const control = spec.type === 'textarea'
        ? el('textarea', { id: id, name: name, rows: 2, maxlength: spec.maxlength })
        : el('input', { id: id, name: name, type: spec.type, min: spec.min, max: spec.max, step: spec.step, inputmode: spec.type === 'number' ? 'decimal' : undefined });
      advancedBox.append(fieldWrap(id, spec.label + ' (model-specific)', control, spec.help));
    });
    advanced.hidden = false;
    submit.disabled = false;
    scheduleEstimate();
  }

  function value(name) {
    const node = document.getElementById('f-' + name);
    return node ? node : null;
  }

  function buildBody() {
    const s = current.schema || {};
    const body = {};
    const prompt = value('generation_prompt');
    body.generation_prompt = prompt ? prompt.value : '';
    const files = value('generation_input_file');
    if (files) {
      const urls = files.value.split(/\s+/).map(function (u) { return u.trim(); }).filter(Boolean);
      if (urls.length) { body.generation_input_file = urls; }
    }
    const last = value('generation_input_file_last_content');
    if (last && last.value.trim()) { body.generation_input_file_last_content = last.value.trim(); }
    body.generation_ratio = value('generation_ratio').value;
    body.generation_output_format = value('generation_output_format').value;
    body.generation_output_number = Number(value('generation_output_number').value);
    if (current.model_type === 'video') {
      body.generation_duration = Number(value('generation_duration').value);
      body.generation_resolution = value('generation_resolution').value;
      if (s.generation_generate_audio) { body.generation_generate_audio = value('generation_generate_audio').checked; }
    }
    const order = value('generation_provider_order');
    if (order && order.value !== 'fastest') { body.generation_provider_order = order.value; }
    (current.specific_schema || []).forEach(function (name) {
      const node = value(name);
      if (!node || node.value.trim() === '') { return; }
      body[name] = node.type === 'number' ? Number(node.value) : node.value;
    });
    return body;
  }

  // -- the estimate ---------------------------------------------------------------------------

  function scheduleEstimate() {
    clearTimeout(estimateTimer);
    estimateTimer = setTimeout(estimate, 250);
  }

  async function estimate() {
    if (!current || !G.hasKey()) { return; }
    const seq = ++estimateSeq;
    const body = buildBody();
    const q = new URLSearchParams({ count: String(body.generation_output_number || 1) });
    if (current.model_type === 'video') {
      q.set('duration', String(body.generation_duration));
      q.set('resolution', body.generation_resolution);
      if (body.generation_generate_audio !== undefined) { q.set('audio', String(body.generation_generate_audio)); }
    }
    estimateOut.textContent = 'Estimating…';
    try {
      const { body: answer } = await G.api('GET', '/v1/estimate/' + current.model_identifier + '?' + q.toString());
      if (seq !== estimateSeq) { return; }
      const d = answer.data;
      estimateOut.textContent = 'Estimate: ' + G.credits(d.cost_total_consumed) + ' credits · balance ' + G.credits(d.credit_balance) +
        (d.credit_balance_can_afford ? '' : ' · not enough credits');
    } catch (err) {
      if (seq !== estimateSeq) { return; }
      estimateOut.textContent = 'Estimate unavailable: ' + err.message + (err.code ? ' (' + err.code + ')' : '');
    }
  }

  // -- create and follow ----------------------------------------------------------------------

  function idempotencyKey() {
    if (window.crypto && crypto.randomUUID) { return 'web-' + crypto.randomUUID(); }
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return 'web-' + Array.from(bytes, function (b) { return b.toString(16).padStart(2, '0'); }).join('');
  }

  async function generate(ev) {
    ev.preventDefault();
    if (!current) { return; }
    clearError();
    const model = current;
    const body = buildBody();
    submit.disabled = true;
    statusBox.replaceChildren(el('p', {}, [el('span', { className: 'state', text: 'submitting' }), document.createTextNode('…')]));
    resultBox.replaceChildren();
    try {
      const { body: created } = await G.api('POST', '/v1/generate/' + model.model_type + '/' + model.model_identifier,
        { json: body, headers: { 'Idempotency-Key': idempotencyKey() } });
      const id = created.data.generation_id;
      loadRecent();
      await follow(id, model);
    } catch (err) {
      if (err.name !== 'AbortError') {
        statusBox.replaceChildren(el('p', { className: 'help', text: 'Not created.' }));
        fail(err);
      }
    } finally {
      submit.disabled = !current;
      scheduleEstimate(); // the balance moved
    }
  }

  function renderStatus(record, startedAt) {
    const status = record ? record.generation_status : 'pending';
    const seconds = ((Date.now() - startedAt) / 1000).toFixed(1);
    const parts = [
      el('span', { className: 'badge ' + status + ' state', 'data-status': status, text: status }),
      document.createTextNode(' · ' + seconds + ' s elapsed'),
    ];
    if (record && record.generation_provider_used) { parts.push(document.createTextNode(' · provider ' + record.generation_provider_used)); }
    if (record) { parts.push(el('div', { className: 'help', text: 'Generation ' + record.generation_id })); }
    if (!TERMINAL.includes(status)) { parts.unshift(el('span', { className: 'spinner', 'aria-hidden': 'true', text: '● ' })); }
    statusBox.replaceChildren(el('p', { id: 'live-status' }, parts));
  }

  async function follow(id, model) {
    if (tracking) { tracking.abort.abort(); }
    const abort = new AbortController();
    tracking = { id: id, abort: abort };
    const startedAt = Date.now();
    let record = null;
    renderStatus(null, startedAt);
    const ticker = setInterval(function () { renderStatus(record, startedAt); }, 250);
    try {
      while (true) {
        const { body, headers } = await G.api('GET', '/v1/content/' + encodeURIComponent(id), { headers: { 'Prefer': 'wait=1' }, signal: abort.signal });
        const before = record ? record.generation_status : '';
        record = body.data;
        renderStatus(record, startedAt);
        if (record.generation_status !== before) { loadRecent(); }
        if (TERMINAL.includes(record.generation_status)) { break; }
        if (!headers.get('Preference-Applied')) { await G.sleep(1000); } // the wait was not granted: poll every second
      }
    } finally {
      clearInterval(ticker);
      if (tracking && tracking.id === id) { tracking = null; }
    }
    showResult(record, model);
  }

  function showResult(record, model) {
    resultBox.replaceChildren();
    resultBox.className = 'result';
    if (record.generation_status === 'failed') {
      fail(new G.ApiError(record.generation_error || 'The generation failed.', record.generation_error_code || '', record.generation_error_name || '', 0, ''));
      return;
    }
    if (record.generation_status !== 'succeeded') { return; }
    const files = record.generation_output_file || [];
    const video = model.model_type === 'video';
    if (video) { resultBox.classList.add('video'); }
    files.forEach(function (url, i) {
      const name = 'output ' + (i + 1) + ' of ' + files.length;
      const media = video
        ? el('video', { src: url, controls: true, preload: 'auto', playsinline: true, 'aria-label': 'Generated video, ' + name })
        : el('img', { src: url, alt: 'Generated image, ' + name + ': ' + record.generation_prompt, loading: 'eager' });
      const link = el('a', { href: url, download: '', text: 'Download ' + name });
      resultBox.append(el('figure', {}, [media, el('figcaption', {}, [link])]));
    });
  }

  // -- recent generations ---------------------------------------------------------------------

  let recentSeq = 0;

  async function loadRecent() {
    if (!G.hasKey()) {
      recentBody.replaceChildren(el('tr', {}, [el('td', { colspan: 6, className: 'help', text: 'Paste a key to list them.' })]));
      return;
    }
    const seq = ++recentSeq;
    try {
      const { body } = await G.api('GET', '/v1/content/list?limit=20');
      if (seq !== recentSeq) { return; }
      const rows = body.data.generations || [];
      if (!rows.length) {
        recentBody.replaceChildren(el('tr', {}, [el('td', { colspan: 6, className: 'help', text: 'No generations yet.' })]));
        return;
      }
      recentBody.replaceChildren.apply(recentBody, rows.map(recentRow));
    } catch (err) {
      if (seq === recentSeq) { fail(err); }
    }
  }

  function recentRow(g) {
    const files = g.generation_output_file || [];
    const outputs = el('td', {}, files.length
      ? files.map(function (url, i) { return el('a', { href: url, download: '', text: 'file ' + (i + 1) + ' ' }); })
      : [document.createTextNode('–')]);
    const actions = el('td', { className: 'row' });
    if (!TERMINAL.includes(g.generation_status)) {
      const cancel = el('button', { type: 'button', className: 'secondary small', 'data-action': 'cancel', 'data-id': g.generation_id, text: 'Cancel', 'aria-label': 'Cancel generation ' + g.generation_id });
      actions.append(cancel);
    }
    actions.append(el('button', { type: 'button', className: 'danger small', 'data-action': 'delete', 'data-id': g.generation_id, text: 'Delete', 'aria-label': 'Delete generation ' + g.generation_id }));
    return el('tr', { 'data-id': g.generation_id }, [
      el('td', { text: G.when(g.generation_created_at) }),
      el('td', { text: g.model_identifier }),
      el('td', {}, [el('span', { className: 'badge ' + g.generation_status, 'data-status': g.generation_status, text: g.generation_status })]),
      el('td', { text: g.generation_provider_used || '–' }),
      outputs,
      actions,
    ]);
  }

  async function recentAction(ev) {
    const button = ev.target.closest('button[data-action]');
    if (!button) { return; }
    const id = button.dataset.id;
    const action = button.dataset.action;
    if (action === 'delete' && !window.confirm('Delete this generation and its files?')) { return; }
    button.disabled = true;
    clearError();
    try {
      if (action === 'cancel') {
        await G.api('POST', '/v1/content/generation/cancel/' + encodeURIComponent(id));
      } else {
        await G.api('DELETE', '/v1/content/' + encodeURIComponent(id));
      }
    } catch (err) {
      fail(err);
    }
    loadRecent();
  }

  // -- wiring ---------------------------------------------------------------------------------

  document.querySelectorAll('input[name="media"]').forEach(function (r) { r.addEventListener('change', showModels); });
  search.addEventListener('input', showModels);
  select.addEventListener('change', function () { chooseModel(select.value); });
  $('gen-form').addEventListener('change', function (ev) { if (ev.target.id !== 'f-generation_prompt') { scheduleEstimate(); } });
  $('gen-form').addEventListener('submit', generate);
  $('recent').addEventListener('click', recentAction);
  $('recent-refresh').addEventListener('click', loadRecent);

  G.bindKeyForm(function (key) {
    clearError();
    if (key) { loadModels(); loadRecent(); } else {
      models = []; current = null; showModels(); chooseModel(''); loadRecent();
    }
  });
})();
