// Talking to the broker: the token, a fetch wrapper for the JSON API and a
// reader of Server-Sent Events streams.

const TOKEN_KEY = 'broker.token';

// The console's token lives in sessionStorage: null means "not signed in",
// an empty string "signed in without a token" (an open broker).
export const token = {
  get() {
    try { return sessionStorage.getItem(TOKEN_KEY); } catch { return null; }
  },
  set(value) {
    try { sessionStorage.setItem(TOKEN_KEY, value); } catch { /* storage off: this page only */ }
  },
  clear() {
    try { sessionStorage.removeItem(TOKEN_KEY); } catch { /* nothing stored */ }
  },
};

// An error answer of the API: {"error":{"code","message"}} with its status.
// status 0 means the broker could not be reached at all.
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
  }
}

export const isAbort = (error) => error?.name === 'AbortError';

// Called on a 401 from a management call (app.js signs out).
let unauthorized = () => {};
export function onUnauthorized(handler) {
  unauthorized = handler;
}

function credentials(explicit) {
  const value = explicit ?? token.get();
  return value ? { Authorization: `Bearer ${value}` } : {};
}

async function errorOf(response) {
  let code = `http_${response.status}`;
  let message = `${response.status} ${response.statusText}`.trim();
  try {
    const body = await response.json();
    if (body?.error?.message) {
      code = body.error.code || code;
      message = body.error.message;
    }
  } catch { /* not JSON: keep the status line */ }
  return new ApiError(response.status, code, message);
}

async function send(path, init) {
  try {
    return await fetch(path, { cache: 'no-store', ...init });
  } catch (error) {
    if (isAbort(error)) throw error;
    throw new ApiError(0, 'unreachable', 'The broker could not be reached.');
  }
}

// request('GET', '/v1/topics', {signal}) → the parsed JSON (null for a 204).
// Options:
//   body     an object, sent as JSON
//   raw      a string sent as it is (set its Content-Type in headers)
//   headers  more request headers
//   token    a token to use instead of the console's
//   session  false: a 401 is this call's error only (it does not sign out)
//   signal   an AbortSignal
export async function request(method, path, options = {}) {
  const headers = { Accept: 'application/json', ...credentials(options.token), ...options.headers };
  let body = options.raw;
  if (options.body !== undefined) {
    body = JSON.stringify(options.body);
    headers['Content-Type'] = 'application/json';
  }
  const response = await send(path, { method, headers, body, signal: options.signal });
  if (!response.ok) {
    const error = await errorOf(response);
    if (response.status === 401 && options.session !== false) unauthorized(error);
    throw error;
  }
  if (response.status === 204) return null;
  const type = response.headers.get('content-type') || '';
  return type.includes('json') ? response.json() : response.text();
}

export const enc = encodeURIComponent;

// Reads a Server-Sent Events stream. It uses fetch rather than EventSource
// because EventSource cannot send the Authorization header.
//   onOpen()       once the broker has accepted the stream
//   onEvent(event) for each {id, event, eventType, data}; `event` is
//                  "message" unless the stream names it (binary, broker.error)
// Resolves when the broker ends the stream; rejects with an ApiError when it
// refuses it (a 401 here does not sign out: listening may need another
// credential than management) and with an AbortError when `signal` aborts.
export async function stream(path, { signal, lastEventId, onOpen, onEvent }) {
  const headers = { Accept: 'text/event-stream', ...credentials() };
  if (lastEventId) headers['Last-Event-ID'] = lastEventId;
  const response = await send(path, { headers, signal });
  if (!response.ok) {
    const error = await errorOf(response);
    if (response.status === 401 && !headers.Authorization) {
      error.message += ' (The console has no token, and this broker does not let anonymous clients listen.)';
    }
    throw error;
  }
  onOpen?.();

  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  let event = blank();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    const lines = buffer.split('\n');
    buffer = lines.pop(); // the unfinished line, if any
    for (const raw of lines) {
      const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
      if (line === '') {
        // A blank line ends the event.
        if (event.seen) onEvent({ id: event.id, event: event.event, eventType: event.eventType, data: event.data.join('\n') });
        event = blank();
      } else if (!line.startsWith(':')) { // ":" starts a comment (heartbeats)
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? '' : line.slice(colon + 1);
        if (value.startsWith(' ')) value = value.slice(1);
        if (field === 'data') event.data.push(value);
        else if (field === 'id') event.id = value;
        else if (field === 'event') event.event = value;
        else if (field === 'event_type') event.eventType = value;
        if (field === 'data' || field === 'id') event.seen = true;
      }
    }
  }
}

function blank() {
  return { id: null, event: 'message', eventType: null, data: [], seen: false };
}

// Waits ms milliseconds, or less if signal aborts first.
export function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}
