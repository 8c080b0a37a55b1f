/* Shared by the Playground and the dashboard: the key (this tab's sessionStorage only),
   calls to the public /v1 operations, and errors shown as the contract's message and code. */
'use strict';

const Genplane = (function () {
  const STORAGE = 'genplane.apiKey';
  const listeners = [];

  function getKey() {
    try { return sessionStorage.getItem(STORAGE) || ''; } catch (e) { return ''; }
  }

  function setKey(key) {
    try {
      if (key) { sessionStorage.setItem(STORAGE, key); } else { sessionStorage.removeItem(STORAGE); }
    } catch (e) { /* storage disabled: the key lives for this page only */ }
    memoryKey = key;
    listeners.forEach(function (fn) { fn(key); });
  }

  let memoryKey = getKey();

  /* An error as the contract words it: the flat shape ({error: "bse_…", message, code}) or the
     nested one ({error: {code, type, message}}). A body that is neither is never shown. */
  class ApiError extends Error {
    constructor(message, code, name, status, requestId) {
      super(message);
      this.code = code; this.errorName = name; this.status = status; this.requestId = requestId;
    }
  }

  function contractError(status, body, requestId) {
    if (body && typeof body === 'object') {
      const e = body.error;
      if (e && typeof e === 'object' && typeof e.message === 'string') {
        return new ApiError(e.message, e.code || '', e.type || '', status, body.request_id || requestId);
      }
      if (typeof e === 'string' && typeof body.message === 'string') {
        return new ApiError(body.message, body.code || '', e, status, body.request_id || requestId);
      }
    }
    return new ApiError('The server answered HTTP ' + status + ' without a contract error.', '', '', status, requestId);
  }

  /* One /v1 call with the key. Resolves to {body, headers}; rejects with an ApiError. */
  async function api(method, path, options) {
    options = options || {};
    const headers = Object.assign({ 'Accept': 'application/json' }, options.headers || {});
    const key = memoryKey;
    if (key) { headers['Authorization'] = 'Bearer ' + key; }
    let body;
    if (options.json !== undefined) {
      headers['Content-Type'] = 'application/json';
      body = JSON.stringify(options.json);
    }
    let response;
    try {
      response = await fetch(path, { method: method, headers: headers, body: body, credentials: 'omit', cache: 'no-store', signal: options.signal });
    } catch (err) {
      if (err && err.name === 'AbortError') { throw err; }
      throw new ApiError('The server could not be reached. Check that genplane is running.', '', 'network', 0, '');
    }
    let parsed = null;
    try { parsed = await response.json(); } catch (e) { parsed = null; }
    const requestId = response.headers.get('X-Request-Id') || '';
    if (!response.ok) { throw contractError(response.status, parsed, requestId); }
    if (!parsed || typeof parsed !== 'object') {
      throw new ApiError('The server answered without a JSON body.', '', '', response.status, requestId);
    }
    return { body: parsed, headers: response.headers };
  }

  function showError(target, err) {
    if (!target) { return; }
    target.replaceChildren();
    if (!err) { target.hidden = true; return; }
    const strong = document.createElement('strong');
    strong.textContent = 'Error' + (err.code ? ' ' + err.code : '') + (err.errorName ? ' (' + err.errorName + ')' : '') + ': ';
    const text = document.createElement('span');
    text.className = 'error-message';
    text.textContent = err.message || String(err);
    target.append(strong, text);
    if (err.requestId) {
      const small = document.createElement('div');
      small.className = 'help';
      small.textContent = 'Request id: ' + err.requestId;
      target.append(small);
    }
    target.hidden = false;
  }

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    Object.entries(attrs || {}).forEach(function ([k, v]) {
      if (v === undefined || v === null || v === false) { return; }
      if (k === 'text') { node.textContent = v; } else if (k === 'className') { node.className = v; } else { node.setAttribute(k, v === true ? '' : String(v)); }
    });
    (children || []).forEach(function (c) { node.append(c); });
    return node;
  }

  function credits(value) {
    if (typeof value !== 'number' || !isFinite(value)) { return '–'; }
    return value.toLocaleString(undefined, { minimumFractionDigits: 3, maximumFractionDigits: 3 });
  }

  function when(iso) {
    if (!iso) { return '–'; }
    const d = new Date(iso);
    return isNaN(d) ? iso : d.toLocaleString();
  }

  /* The key form: fills the field with the stored key's presence, saves, forgets. */
  function bindKeyForm(onChange) {
    const form = document.getElementById('key-form');
    const input = document.getElementById('api-key');
    const state = document.getElementById('key-state');
    const forget = document.getElementById('key-forget');
    function describe() {
      state.textContent = memoryKey ? 'A key is in use for this tab (' + memoryKey.slice(0, 9) + '…).' : 'No key yet.';
    }
    form.addEventListener('submit', function (ev) {
      ev.preventDefault();
      const value = input.value.trim();
      if (!value) { input.focus(); return; }
      input.value = '';
      setKey(value);
    });
    forget.addEventListener('click', function () { input.value = ''; setKey(''); });
    listeners.push(function () { describe(); onChange(memoryKey); });
    describe();
    onChange(memoryKey);
  }

  function sleep(ms) { return new Promise(function (resolve) { setTimeout(resolve, ms); }); }

  return { api: api, ApiError: ApiError, showError: showError, el: el, credits: credits, when: when,
    bindKeyForm: bindKeyForm, hasKey: function () { return !!memoryKey; }, sleep: sleep };
})();
