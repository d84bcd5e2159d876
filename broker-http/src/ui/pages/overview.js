// #/ — every topic, with its publish rate measured between polls.

import { request, isAbort } from '../api.js';
import { h, num, table, row, notice, swap, link, pill, section, act, topicRoute, isSystemTopic, fill } from '../dom.js';

export function render(main, ctx) {
  document.title = 'Topics · Broker console';
  const status = h('div', { 'aria-live': 'polite' });
  const list = h('div', {}, notice('Loading…'));
  fill(main,
    h('h1', {}, 'Topics'),
    status,
    section(ctx.role === 'admin' ? 'All topics' : 'Your topics', { 'data-testid': 'topics' }, list),
    ctx.role === 'admin' ? createTopic(ctx, () => refresh()) : null);

  let previous = null; // the last poll: {at, published: Map name → count}
  const refresh = ctx.every(3000, async () => {
    let topics;
    try {
      ({ topics } = await request('GET', '/v1/topics', { signal: ctx.signal }));
    } catch (error) {
      if (isAbort(error)) return;
      swap(status, error.message, () => notice(`Could not load the topics: ${error.message}`, 'error'));
      if (!list.dataset.signature) fill(list); // not "Loading…" forever
      return;
    }
    const at = performance.now();
    const rates = new Map();
    for (const t of topics) {
      const before = previous?.published.get(t.name);
      if (typeof t.published === 'number' && typeof before === 'number') {
        rates.set(t.name, Math.max(0, (t.published - before) / ((at - previous.at) / 1000)));
      }
    }
    previous = { at, published: new Map(topics.map((t) => [t.name, t.published])) };
    swap(status, '', () => []);
    swap(list, JSON.stringify([topics, [...rates]]), () => topicTable(topics, rates));
  });
}

function topicTable(topics, rates) {
  if (topics.length === 0) {
    return h('p', { class: 'empty' },
      'No topics yet. A topic appears when a publisher, listener or subscriber is registered on it, or when it is created.');
  }
  const sorted = [...topics].sort((a, b) => a.name.localeCompare(b.name));
  return table(
    ['Topic', 'Publishers', 'Subscribers', 'Lag', 'Failing', 'Disabled', 'Rate (msg/s)'],
    sorted.map((t) => row(
      { 'data-topic': t.name, class: t.failing > 0 || t.disabled > 0 ? 'attention' : null },
      [
        [link(topicRoute(t.name), t.name, { 'data-key': `topic:${t.name}` }),
          isSystemTopic(t.name) ? [' ', pill('system')] : null],
        num(t.publishers),
        num(t.subscribers),
        num(t.lag),
        t.failing > 0 ? pill(num(t.failing), 'warn') : num(t.failing),
        t.disabled > 0 ? pill(num(t.disabled), 'bad') : num(t.disabled),
        rates.has(t.name) ? rates.get(t.name).toLocaleString(undefined, { maximumFractionDigits: 1 }) : '—',
      ])),
    'Topics');
}

// Operators may create a topic explicitly (kept until deleted).
function createTopic(ctx, refresh) {
  const input = h('input', { id: 'new-topic', name: 'name', type: 'text', autocomplete: 'off', spellcheck: 'false', 'aria-describedby': 'new-topic-help' });
  const out = h('div', { 'aria-live': 'polite' });
  const button = h('button', { type: 'submit' }, 'Create topic');
  const form = h('form', {
    class: 'inline-form',
    novalidate: true,
    onsubmit(event) {
      event.preventDefault();
      act(button, out, async () => {
        const name = input.value.trim();
        if (!name) throw new Error('Enter a topic name.');
        await request('POST', '/v1/topics', { body: { name }, signal: ctx.signal });
        input.value = '';
        refresh();
        return `Created topic ${name}.`;
      });
    },
  },
    h('div', { class: 'field' },
      h('label', { for: 'new-topic' }, 'Topic name'),
      input,
      h('p', { class: 'help', id: 'new-topic-help' }, '1–128 characters of A–Z, a–z, 0–9, “.”, “_” and “-”.')),
    button);
  return section('Create a topic', {}, form, out);
}
