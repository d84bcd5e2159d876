// #/events — the broker's operational events, live from the reserved topic
// broker.events (operators only).

import { request, stream, sleep, isAbort } from '../api.js';
import { h, time, notice, link, pill, section, act, topicRoute, subscriberRoute, fill } from '../dom.js';

const TOPIC = 'broker.events';
const KEEP = 200; // events kept on the page
const KINDS = {
  'subscriber.disabled': 'bad',
  'message.dead_lettered': 'bad',
  'subscriber.circuit_opened': 'warn',
  'subscriber.enabled': 'ok',
  'subscriber.circuit_closed': 'ok',
};

export function render(main, ctx) {
  document.title = 'Events · Broker console';
  const title = h('h1', {}, 'Operational events');
  if (ctx.role === 'tenant') {
    fill(main, title, notice('Operational events are shown to the operator only.'));
    return;
  }
  const state = h('p', { class: 'stream-state', role: 'status' });
  const list = h('ol', { class: 'feed' });
  const empty = h('p', { class: 'empty' }, 'Waiting for events…');
  const out = h('div', { 'aria-live': 'polite' });
  let wake = null; // ends the wait between tries early
  const create = h('button', { type: 'button', hidden: true }, 'Start recording events');
  create.addEventListener('click', () => act(create, out, async () => {
    await request('POST', '/v1/topics', { body: { name: TOPIC }, signal: ctx.signal });
    wake?.();
    return `Created ${TOPIC}: events are kept from now on.`;
  }));

  fill(main,
    title,
    h('p', { class: 'lead' }, 'What happens to deliveries and topics, as the broker publishes it on ', h('code', {}, TOPIC),
      ' (the last 50 first). ', link(topicRoute(TOPIC), 'See the topic.')),
    section('Live feed', { 'data-testid': 'events-feed' },
      h('div', { class: 'toolbar' }, state, create), out, empty, list));

  const setState = (kind, label) => {
    state.className = `stream-state stream-${kind}`;
    state.textContent = label;
  };

  function add(event) {
    let parsed = null;
    try { parsed = JSON.parse(event.data); } catch { /* shown raw */ }
    const type = parsed?.type || event.eventType || event.event;
    const data = parsed?.data || {};
    empty.hidden = true;
    list.prepend(h('li', { class: 'feed-item' },
      h('div', { class: 'feed-head' },
        pill(type, KINDS[type] || 'neutral'),
        parsed?.timestamp ? time(parsed.timestamp) : null,
        data.topic ? link(topicRoute(data.topic), data.topic) : null,
        data.topic && data.subscriber_id ? link(subscriberRoute(data.topic, data.subscriber_id), data.subscriber_id) : null,
        data.message_id ? h('code', {}, data.message_id) : null,
        data.reason ? h('span', { class: 'muted' }, data.reason) : null),
      h('details', {},
        h('summary', {}, 'Full event'),
        h('pre', {}, parsed ? JSON.stringify(parsed, null, 2) : event.data))));
    while (list.children.length > KEEP) list.lastElementChild.remove();
  }

  // Is broker.events there? Asked through the topic list, so that waiting
  // for it is not a 404 every few seconds.
  async function exists() {
    const { topics } = await request('GET', '/v1/topics', { signal: ctx.signal });
    return topics.some((t) => t.name === TOPIC);
  }

  async function loop() {
    let lastId = null;
    while (!ctx.signal.aborted) {
      try {
        if (!(await exists())) {
          throw Object.assign(new Error('absent'), { status: 404 });
        }
        create.hidden = true;
        setState('connecting', 'Connecting…');
        await stream(`/v1/topics/${TOPIC}/events${lastId ? '' : '?last_n=50'}`, {
          signal: ctx.signal,
          lastEventId: lastId, // after a reconnect: what came since, not the last 50 again
          onOpen: () => setState('live', 'Live'),
          onEvent(event) {
            if (event.id) lastId = event.id;
            add(event);
          },
        });
        setState('closed', 'Closed: the broker ended the stream. Reconnecting in 5 s.');
      } catch (error) {
        if (isAbort(error) || ctx.signal.aborted) return;
        if (error.status === 404) {
          create.hidden = false;
          setState('absent', 'No operational events yet: the broker keeps them once broker.events exists. Checking again every 5 s.');
        } else {
          setState('closed', `Closed: ${error.message} Retrying in 5 s.`);
        }
      }
      const controller = new AbortController();
      wake = () => controller.abort();
      ctx.signal.addEventListener('abort', wake, { once: true });
      await sleep(5000, controller.signal);
      ctx.signal.removeEventListener('abort', wake);
    }
  }
  loop();
}
