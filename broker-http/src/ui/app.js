// The console's entry point: takes the token, asks who it is, and routes
// #/… to the pages. Each page gets a ctx whose signal aborts (its requests,
// streams and timers) when the user leaves it.

import { token, request, onUnauthorized, isAbort } from './api.js';
import { h, notice } from './dom.js';
import * as login from './pages/login.js';
import * as overview from './pages/overview.js';
import * as topic from './pages/topic.js';
import * as subscriber from './pages/subscriber.js';
import * as events from './pages/events.js';

const main = document.getElementById('page');
const nav = document.getElementById('nav');
const badge = document.getElementById('role-badge');
const signOut = document.getElementById('sign-out');

let role = null; // "admin" or "tenant", once asked
let controller = null; // aborts the page on show
let loginShown = false;

// #token=… (a link handed to the user): keep it for this tab only and take
// it out of the address bar and the history at once. Checked on load and on
// every hash change (the link may be opened in a tab already on the console).
function takeTokenFromUrl() {
  if (!location.hash.startsWith('#token=')) return;
  let value = location.hash.slice('#token='.length);
  try { value = decodeURIComponent(value); } catch { /* keep it as given */ }
  token.set(value);
  role = null;
  history.replaceState(null, '', '/ui/#/');
}

function route() {
  let parts;
  try {
    parts = location.hash.replace(/^#\/?/, '').split('/').filter(Boolean).map(decodeURIComponent);
  } catch {
    return null;
  }
  const [first, name, third, id] = parts;
  if (parts.length === 0) return { page: overview, nav: 'topics', params: {} };
  if (first === 'events' && parts.length === 1) return { page: events, nav: 'events', params: {} };
  if (first === 'topics' && parts.length === 2) return { page: topic, nav: 'topics', params: { topic: name } };
  if (first === 'topics' && third === 'subscribers' && parts.length === 4) {
    return { page: subscriber, nav: 'topics', params: { topic: name, id } };
  }
  return null;
}

function fresh() {
  controller?.abort();
  controller = new AbortController();
  return controller.signal;
}

async function show() {
  const signal = fresh();
  if (token.get() === null) {
    showLogin();
    return;
  }
  loginShown = false;
  if (role === null) {
    await whoami(signal);
    if (signal.aborted) return;
  }
  header(true);
  const found = route();
  for (const a of nav.querySelectorAll('a')) {
    if (found && a.dataset.nav === found.nav) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  main.replaceChildren();
  if (!found) {
    document.title = 'Not found · Broker console';
    main.append(h('h1', {}, 'Not found'), h('p', {}, 'There is no such page. ', h('a', { href: '#/' }, 'See the topics.')));
    return;
  }
  found.page.render(main, { signal, params: found.params, role: role || 'admin', every: (ms, fn) => every(signal, ms, fn) });
}

// GET /v1/whoami, once per sign-in. A broker without it (404) is run by
// its operator; any other failure is retried on the next page.
async function whoami(signal) {
  try {
    const me = await request('GET', '/v1/whoami', { signal });
    role = me?.role === 'tenant' ? 'tenant' : 'admin';
  } catch (error) {
    if (isAbort(error) || error.status === 401) return;
    if (error.status === 404 || error.status === 405) role = 'admin';
  }
}

function header(signedIn) {
  nav.hidden = !signedIn;
  signOut.hidden = !signedIn;
  badge.hidden = !signedIn;
  const tenant = role === 'tenant';
  nav.querySelector('[data-nav="events"]').hidden = tenant;
  badge.textContent = tenant ? 'tenant portal' : 'operator';
  badge.className = `badge ${tenant ? 'badge-tenant' : 'badge-operator'}`;
}

function showLogin(message, kind = 'error') {
  fresh();
  loginShown = true;
  header(false);
  login.render(main, {
    message,
    kind,
    onSignIn(value) {
      token.set(value);
      role = null;
      if (location.hash === '#/') show();
      else location.hash = '#/';
    },
  });
}

// Any management call answered 401: the token is no good (or gone).
onUnauthorized((error) => {
  token.clear();
  role = null;
  if (!loginShown) showLogin(`The broker refused the token: ${error.message}`);
});

signOut.addEventListener('click', () => {
  try { sessionStorage.clear(); } catch { /* nothing to clear */ }
  role = null;
  showLogin('Signed out.', 'info');
});

// Runs fn now and then every ms milliseconds until signal aborts; the
// returned function runs it again at once (after an action, say). fn shows
// its own errors; whatever escapes is dropped here, never left unhandled.
function every(signal, ms, fn) {
  let timer;
  let running = false;
  let again = false;
  const tick = async () => {
    if (running) { again = true; return; }
    running = true;
    clearTimeout(timer);
    do {
      again = false;
      try { await fn(); } catch { /* shown by fn */ }
    } while (again && !signal.aborted);
    running = false;
    if (!signal.aborted) timer = setTimeout(tick, ms);
  };
  signal.addEventListener('abort', () => clearTimeout(timer), { once: true });
  tick();
  return tick;
}

window.addEventListener('hashchange', () => {
  takeTokenFromUrl();
  show().then(() => {
    window.scrollTo(0, 0);
    if (!loginShown) main.focus({ preventScroll: true });
  }).catch(() => {});
});

window.addEventListener('unhandledrejection', (event) => {
  // Aborted requests of a page left behind are expected, not errors.
  if (isAbort(event.reason)) event.preventDefault();
});

takeTokenFromUrl();
show().catch((error) => main.replaceChildren(notice(`The console could not start: ${error.message}`, 'error')));
