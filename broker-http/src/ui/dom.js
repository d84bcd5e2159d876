// Small helpers to build the page safely: every piece of API data goes in
// through textContent or setAttribute, never through innerHTML.

// h('a', {href: '#/', class: 'x', onclick: fn}, 'text', child, [more])
// - attributes whose name starts with "on" and whose value is a function
//   become event listeners;
// - value, checked, disabled, hidden, open, selected are set as properties;
// - null, undefined and false children are skipped; strings become text.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') {
      el.addEventListener(name.slice(2), value);
    } else if (['value', 'checked', 'disabled', 'hidden', 'open', 'selected'].includes(name)) {
      el[name] = value;
    } else {
      el.setAttribute(name, value === true ? '' : String(value));
    }
  }
  append(el, children);
  return el;
}

// Replace el's children, skipping null/false as h() does.
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

// A number with the user's grouping, or "—" when it is missing.
export function num(value) {
  return typeof value === 'number' && Number.isFinite(value) ? value.toLocaleString() : '—';
}

// Plain text, or "—" when missing or empty.
export function text(value) {
  return value === null || value === undefined || value === '' ? '—' : String(value);
}

// A <time> in the user's locale with the ISO time in its title.
// Takes an RFC 3339 string or milliseconds since the epoch.
export function time(value) {
  if (value === null || value === undefined) return document.createTextNode('—');
  const date = new Date(value);
  if (Number.isNaN(date.getTime())) return document.createTextNode(String(value));
  const iso = date.toISOString();
  return h('time', { datetime: iso, title: iso }, date.toLocaleString());
}

// A coloured status word: kind is ok, warn, bad or neutral.
export function pill(label, kind = 'neutral') {
  return h('span', { class: `pill pill-${kind}` }, label);
}

export function statusPill(status) {
  return pill(text(status), status === 'active' ? 'ok' : status === 'disabled' ? 'bad' : 'neutral');
}

export function circuitPill(circuit) {
  return pill(text(circuit).replace('_', ' '), circuit === 'closed' ? 'ok' : circuit ? 'warn' : 'neutral');
}

// A table inside a horizontally scrolling wrapper.
// columns: header labels; rows: <tr> elements (see row()).
export function table(columns, rows, caption) {
  return h('div', { class: 'table-wrap' },
    h('table', {},
      caption ? h('caption', { class: 'visually-hidden' }, caption) : null,
      h('thead', {}, h('tr', {}, columns.map((c) => h('th', { scope: 'col' }, c)))),
      h('tbody', {}, rows)));
}

export function row(attrs, cells) {
  return h('tr', attrs, cells.map((c) => h('td', {}, c)));
}

// A message line: kind is info, ok or error. Errors are announced.
export function notice(message, kind = 'info') {
  return h('p', { class: `notice notice-${kind}`, role: kind === 'error' ? 'alert' : 'status' }, message);
}

// Long text cut to `limit` characters, with a <details> to see it all.
// key keeps the <details> open across refreshes (see swap()).
export function longText(value, limit, key) {
  if (value.length <= limit) return h('code', { class: 'wrap' }, value);
  return h('div', {},
    h('code', { class: 'wrap' }, value.slice(0, limit) + '…'),
    h('details', { 'data-key': key },
      h('summary', { 'data-key': `${key}:summary` }, `Show more (${value.length.toLocaleString()} characters)`),
      h('pre', {}, value)));
}

// Replace a container's children with fresh ones, for the sections that are
// refreshed every few seconds. It does nothing when `signature` (e.g. the
// JSON the section was built from) has not changed, and otherwise keeps what
// the user was doing: the focused element and open <details> (both found
// again by their data-key) and the horizontal scroll of tables.
export function swap(container, signature, build) {
  if (signature !== undefined && container.dataset.signature === signature) return;
  const active = document.activeElement;
  const focusKey = container.contains(active) ? active.dataset.key : undefined;
  const open = new Set([...container.querySelectorAll('details[open][data-key]')].map((d) => d.dataset.key));
  const scrolls = [...container.querySelectorAll('.table-wrap')].map((w) => w.scrollLeft);

  fill(container, build());
  if (signature !== undefined) container.dataset.signature = signature;

  for (const d of container.querySelectorAll('details[data-key]')) {
    if (open.has(d.dataset.key)) d.open = true;
  }
  container.querySelectorAll('.table-wrap').forEach((w, i) => { w.scrollLeft = scrolls[i] || 0; });
  if (focusKey) {
    const again = [...container.querySelectorAll('[data-key]')].find((el) => el.dataset.key === focusKey);
    if (again) again.focus({ preventScroll: true });
  }
}

// A link to a route of the console.
export function link(route, label, attrs = {}) {
  return h('a', { href: route, ...attrs }, label);
}

export const topicRoute = (topic) => `#/topics/${encodeURIComponent(topic)}`;
export const subscriberRoute = (topic, id) =>
  `${topicRoute(topic)}/subscribers/${encodeURIComponent(id)}`;

// Topics only the broker itself writes to.
export const isSystemTopic = (name) => name === 'broker.events';

// A titled section of a page. The heading's id comes from the title.
export function section(title, attrs, ...body) {
  const id = `h-${title.toLowerCase().replace(/[^a-z0-9]+/g, '-')}`;
  return h('section', { class: 'panel', 'aria-labelledby': id, ...attrs }, h('h2', { id }, title), body);
}

// Runs fn() for a button or form: one run at a time, its outcome (the string
// or node it returns, or the error's message) shown in `out`.
export async function act(control, out, fn) {
  if (control.getAttribute('aria-busy') === 'true') return;
  control.setAttribute('aria-busy', 'true');
  out.replaceChildren(notice('Working…'));
  try {
    const result = await fn();
    out.replaceChildren(typeof result === 'string' ? notice(result, 'ok') : result || '');
  } catch (error) {
    if (error?.name === 'AbortError') return;
    out.replaceChildren(notice(error?.message || String(error), 'error'));
  } finally {
    control.removeAttribute('aria-busy');
  }
}
