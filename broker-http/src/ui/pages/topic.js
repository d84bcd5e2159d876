// #/topics/<topic> — its subscribers, publishers, listeners and groups, a
// live tail of its messages and a form to publish a test message.

import { request, stream, isAbort, enc } from '../api.js';
import {
  h, num, text, time, table, row, notice, swap, link, pill, statusPill, circuitPill,
  section, act, fill, subscriberRoute, isSystemTopic,
} from '../dom.js';

const COUNTERS = ['published', 'delivered', 'failed', 'retried', 'dead_lettered', 'dropped', 'refused', 'filtered'];
const publisherTokens = new Map(); // topic → the token typed or registered here (this page load only)

export function render(main, ctx) {
  const { topic } = ctx.params;
  document.title = `${topic} · Broker console`;
  const system = isSystemTopic(topic);
  const status = h('div', { 'aria-live': 'polite' });
  const summary = h('div', {}, notice('Loading…'));
  const subscribers = h('div');
  const publishers = h('div');
  const listeners = h('div');
  const groups = h('div');

  fill(main,
    h('nav', { class: 'crumbs', 'aria-label': 'Breadcrumb' }, link('#/', 'Topics'), ' / ', h('span', { 'aria-current': 'page' }, topic)),
    h('h1', {}, topic, ' ', system ? pill('system') : null),
    status,
    summary,
    section('Subscribers', { 'data-testid': 'subscribers' }, subscribers),
    h('div', { class: 'columns' },
      section('Publishers', {}, publishers),
      section('Listeners', {}, listeners),
      section('Groups', { 'data-testid': 'groups' }, groups)),
    h('div', { class: 'columns columns-2' },
      system
        ? section('Send a test message', {}, notice('Only the broker publishes on this reserved topic.'))
        : testMessage(ctx, topic),
      liveTail(ctx, topic)));

  ctx.every(3000, async () => {
    let detail;
    try {
      detail = await request('GET', `/v1/topics/${enc(topic)}`, { signal: ctx.signal });
    } catch (error) {
      if (isAbort(error)) return;
      const message = error.status === 404 ? 'There is no such topic (or it was deleted).' : `Could not load the topic: ${error.message}`;
      swap(status, message, () => notice(message, 'error'));
      if (!summary.dataset.signature) fill(summary); // not "Loading…" forever
      return;
    }
    swap(status, '', () => []);
    swap(summary, JSON.stringify([detail.counters, detail.live]), () => counters(detail));
    swap(subscribers, JSON.stringify(detail.subscribers), () => subscriberTable(topic, detail.subscribers));
    swap(publishers, JSON.stringify(detail.publishers), () => namedTable(detail.publishers, 'No publishers.'));
    swap(listeners, JSON.stringify(detail.listeners), () => namedTable(detail.listeners, 'No listeners.'));
    swap(groups, JSON.stringify(detail.groups ?? null), () => groupTable(detail.groups));
  });
}

function counters(detail) {
  const c = detail.counters || {};
  return h('dl', { class: 'tiles' },
    h('div', {}, h('dt', {}, 'live connections'), h('dd', {}, num(detail.live?.connections))),
    COUNTERS.map((name) => h('div', {}, h('dt', {}, name.replace('_', ' ')), h('dd', {}, num(c[name])))));
}

function subscriberTable(topic, subscribers) {
  if (!subscribers?.length) return h('p', { class: 'empty' }, 'No subscribers.');
  return table(
    ['ID', 'URL', 'Method', 'Status', 'Circuit', 'Lag', 'Delivered', 'Failed', 'Dead', 'Retried', 'Dropped', 'Filtered'],
    subscribers.map((s) => {
      const c = s.counters || {};
      return row(
        { 'data-subscriber': s.id, class: s.status === 'disabled' || s.circuit !== 'closed' ? 'attention' : null },
        [
          link(subscriberRoute(topic, s.id), s.id, { 'data-key': `sub:${s.id}` }),
          h('code', { class: 'wrap' }, s.url),
          s.method, statusPill(s.status), circuitPill(s.circuit), num(s.lag),
          num(c.delivered), num(c.failed), num(c.dead_lettered), num(c.retried), num(c.dropped), num(c.filtered),
        ]);
    }),
    'Subscribers');
}

function namedTable(items, empty) {
  if (!items?.length) return h('p', { class: 'empty' }, empty);
  return table(['Name', 'ID'], items.map((p) => row({}, [text(p.name), h('code', {}, p.id)])));
}

// Consumer groups: how far each has got, and what its consumers hold.
function groupTable(groups) {
  if (!groups?.length) return h('p', { class: 'empty' }, 'No consumer groups.');
  return table(['Name', 'Lag', 'Leased', 'Offset', 'Ack timeout', 'Max deliveries'], groups.map((g) =>
    row({}, [text(g.name), num(g.lag), num(g.leased), num(g.offset), text(g.ack_timeout), num(g.max_deliveries)])));
}

// Live tail: the topic's messages as they are published (SSE), newest first.
function liveTail(ctx, topic) {
  const state = h('p', { class: 'stream-state', role: 'status' });
  const list = h('ol', { class: 'feed' });
  const empty = h('p', { class: 'empty' }, 'Messages published from now on appear here.');
  const toggle = h('button', { type: 'button' }, 'Stop');
  let lastId = null;
  let current = null; // aborts the open stream

  const setState = (kind, label) => {
    state.className = `stream-state stream-${kind}`;
    state.textContent = label;
    toggle.textContent = kind === 'closed' ? 'Reconnect' : 'Stop';
  };

  async function start() {
    current = new AbortController();
    const { signal } = current;
    setState('connecting', 'Connecting…');
    try {
      await stream(`/v1/topics/${enc(topic)}/events`, {
        signal,
        lastEventId: lastId,
        onOpen: () => setState('live', 'Live'),
        onEvent(event) {
          if (event.id) lastId = event.id;
          add(event);
        },
      });
      setState('closed', 'Closed: the broker ended the stream.');
    } catch (error) {
      if (ctx.signal.aborted) return;
      setState('closed', isAbort(error) ? 'Closed: stopped.' : `Closed: ${error.message}`);
    }
    current = null;
  }

  function add(event) {
    empty.hidden = true;
    const body = event.data.length > 500 ? `${event.data.slice(0, 500)}…` : event.data;
    const kind = event.event === 'broker.error' ? 'bad' : 'neutral';
    list.prepend(h('li', { class: 'feed-item' },
      h('div', { class: 'feed-head' },
        h('code', {}, event.id || event.event),
        event.eventType ? pill(event.eventType, kind) : null,
        event.event !== 'message' ? pill(event.event, kind) : null,
        h('span', { class: 'muted' }, 'received ', time(Date.now()))),
      h('pre', {}, body)));
    while (list.children.length > 50) list.lastElementChild.remove();
  }

  ctx.signal.addEventListener('abort', () => current?.abort(), { once: true });
  toggle.addEventListener('click', () => {
    if (current) current.abort();
    else start();
  });
  start();
  return section('Live tail', { 'data-testid': 'live-tail' },
    h('div', { class: 'toolbar' }, state, toggle), empty, list);
}

// Publish a message. Publishing takes a publisher token of the topic (or a
// JWT with publish:<topic>), not the admin token: the form takes one, and can
// register a publisher named "console" to get one.
function testMessage(ctx, topic) {
  const payload = h('textarea', { id: 'tm-payload', name: 'payload', rows: 5, spellcheck: 'false', value: '{"test":true}' });
  const eventType = h('input', { id: 'tm-event-type', name: 'event_type', type: 'text', autocomplete: 'off', spellcheck: 'false', placeholder: 'order.created' });
  const contentType = h('select', { id: 'tm-content-type', name: 'content_type' },
    h('option', { value: 'application/json' }, 'application/json'),
    h('option', { value: 'text/plain' }, 'text/plain'));
  const tokenInput = h('input', {
    id: 'tm-token', name: 'publisher_token', type: 'password', autocomplete: 'off',
    value: publisherTokens.get(topic) || '', 'aria-describedby': 'tm-token-help',
  });
  tokenInput.addEventListener('change', () => publisherTokens.set(topic, tokenInput.value.trim()));
  const out = h('div', { 'aria-live': 'polite' });
  const send = h('button', { type: 'submit', class: 'primary' }, 'Send');

  const register = h('button', { type: 'button' }, 'Register a console publisher');
  register.addEventListener('click', () => act(register, out, async () => {
    const publisher = await request('POST', `/v1/topics/${enc(topic)}/publishers`, { body: { name: 'console' }, signal: ctx.signal });
    tokenInput.value = publisher.token;
    publisherTokens.set(topic, publisher.token);
    return `Using publisher “console” (${publisher.id}); its token is filled in.`;
  }));

  const form = h('form', {
    novalidate: true,
    onsubmit(event) {
      event.preventDefault();
      act(send, out, async () => {
        const headers = { 'Content-Type': contentType.value };
        if (eventType.value.trim()) headers['Event-Type'] = eventType.value.trim();
        try {
          const sent = await request('POST', `/v1/topics/${enc(topic)}/messages`, {
            raw: payload.value, headers, token: tokenInput.value.trim() || undefined, session: false, signal: ctx.signal,
          });
          return `Published ${sent.id} at offset ${sent.offset} for ${sent.subscribers} subscriber(s).`;
        } catch (error) {
          if (error.status === 401 || error.status === 403) {
            error.message += ' Publishing needs a publisher token of this topic: the admin token is not one.';
          }
          throw error;
        }
      });
    },
  },
    h('div', { class: 'field' }, h('label', { for: 'tm-payload' }, 'Payload'), payload),
    h('div', { class: 'field-row' },
      h('div', { class: 'field' }, h('label', { for: 'tm-event-type' }, 'Event type (optional)'), eventType),
      h('div', { class: 'field' }, h('label', { for: 'tm-content-type' }, 'Content type'), contentType)),
    h('div', { class: 'field' },
      h('label', { for: 'tm-token' }, 'Publisher token'),
      tokenInput,
      h('p', { class: 'help', id: 'tm-token-help' },
        'Empty: the console’s own token is sent (a JWT with publish:', topic, ' works; the admin token does not).')),
    h('div', { class: 'buttons' }, send, register));
  return section('Send a test message', { 'data-testid': 'test-message' }, form, out);
}
