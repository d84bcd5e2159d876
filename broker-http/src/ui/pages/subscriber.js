// #/topics/<topic>/subscribers/<id> — one subscriber: its settings and
// stats, an edit form, actions, its dead letters and its attempt log.

import { request, isAbort, enc } from '../api.js';
import {
  h, num, text, time, table, row, notice, swap, link, pill, statusPill, circuitPill,
  section, act, fill, longText, topicRoute,
} from '../dom.js';

const COUNTERS = ['delivered', 'failed', 'retried', 'dead_lettered', 'dead_letters_evicted', 'dropped', 'refused', 'filtered'];
const WINDOWS = [['last_5m', 'Last 5 minutes'], ['last_1h', 'Last hour'], ['last_24h', 'Last 24 hours']];

export function render(main, ctx) {
  const { topic, id } = ctx.params;
  const base = `/v1/topics/${enc(topic)}/subscribers/${enc(id)}`;
  document.title = `${id} · Broker console`;
  const opts = { signal: ctx.signal };
  const status = h('div', { 'aria-live': 'polite' });
  const settings = h('div', {}, notice('Loading…'));
  const editSlot = h('div', {}, notice('Loading…'));
  const dead = h('div');
  const attempts = h('div');
  const deadOut = h('div', { 'aria-live': 'polite' });
  let editShown = false;

  // Redrive some dead letters (message ids) or, with none given, all.
  function redrive(button, ids) {
    act(button, deadOut, async () => {
      const answer = await request('POST', `${base}/redrive`, { body: ids ? { message_ids: ids } : {}, ...opts });
      refresh();
      return `Redriven: ${answer.redriven} message(s).`;
    });
  }
  const redriveAll = h('button', { type: 'button', 'data-testid': 'redrive-all' }, 'Redrive all');
  redriveAll.addEventListener('click', () => redrive(redriveAll, null));

  fill(main,
    h('nav', { class: 'crumbs', 'aria-label': 'Breadcrumb' },
      link('#/', 'Topics'), ' / ', link(topicRoute(topic), topic), ' / ', h('span', { 'aria-current': 'page' }, id)),
    h('h1', {}, h('span', { class: 'muted' }, 'Subscriber '), id),
    status,
    section('Settings', {}, settings),
    h('div', { class: 'columns columns-2' },
      section('Edit', {}, editSlot),
      section('Actions', {}, actions(ctx, base, () => refresh()))),
    section('Dead letters', { 'data-testid': 'dead-letters' },
      h('div', { class: 'toolbar' }, redriveAll, deadOut), dead),
    section('Attempt log', { 'data-testid': 'attempts' }, attempts));

  const refresh = ctx.every(3000, async () => {
    const [detail, log, letters] = await Promise.allSettled([
      request('GET', base, opts),
      request('GET', `${base}/attempts?limit=50`, opts),
      request('GET', `${base}/dead-letters?limit=100`, opts),
    ]);
    if (ctx.signal.aborted) return;
    const failure = [detail, log, letters].find((r) => r.status === 'rejected' && !isAbort(r.reason));
    const message = failure && (failure.reason.status === 404
      ? 'There is no such subscriber (or it was deleted).'
      : `Could not load everything: ${failure.reason.message}`);
    swap(status, message || '', () => (message ? notice(message, 'error') : []));
    if (detail.status === 'rejected' && !editShown) { // not "Loading…" forever
      fill(settings);
      fill(editSlot);
    }
    if (detail.status === 'fulfilled') {
      swap(settings, JSON.stringify(detail.value), () => settingsView(detail.value));
      if (!editShown) { // built once: a refresh never touches what is being typed
        editShown = true;
        fill(editSlot, editForm(ctx, base, detail.value, () => refresh()));
      }
    }
    if (log.status === 'fulfilled') {
      swap(attempts, JSON.stringify(log.value.attempts), () => attemptTable(log.value.attempts));
    }
    if (letters.status === 'fulfilled') {
      swap(dead, JSON.stringify(letters.value.dead_letters), () => deadTable(letters.value.dead_letters, redrive));
    }
  });
}

function settingsView(s) {
  const filter = s.filter
    ? [s.filter.event_types?.length ? `event types: ${s.filter.event_types.join(', ')}` : null,
      s.filter.expression ? `expression: ${s.filter.expression}` : null].filter(Boolean).join('; ')
    : 'none: every message';
  const retry = s.retry?.schedule?.length
    ? `${s.retry.max_attempts} attempts, waits ${s.retry.schedule.join(', ')}`
    : s.retry?.max_attempts === 1
      ? '1 attempt, no retries'
      : `${num(s.retry?.max_attempts)} attempts, exponential backoff`;
  const c = s.counters || {};
  return [
    h('dl', { class: 'props' },
      prop('Status', statusPill(s.status)),
      prop('Circuit', circuitPill(s.circuit)),
      prop('URL', h('code', { class: 'wrap' }, s.url)),
      prop('Method', s.method),
      prop('Header names', s.header_names?.length ? s.header_names.join(', ') : 'none'),
      prop('Retry', retry),
      prop('Ordered', s.ordered ? 'yes: one at a time, in order' : 'no'),
      prop('Filter', h('span', { class: 'wrap' }, filter)),
      prop('Offset', num(s.offset)),
      prop('Lag', num(s.lag))),
    h('dl', { class: 'tiles' },
      COUNTERS.map((name) => h('div', {}, h('dt', {}, name.replaceAll('_', ' ')), h('dd', {}, num(c[name]))))),
    h('h3', {}, 'Endpoint stats'),
    table(['Window', 'Succeeded', 'Failed', 'Success rate', 'p50', 'p99'],
      WINDOWS.map(([key, label]) => {
        const w = s.stats?.[key] || {};
        const total = (w.succeeded || 0) + (w.failed || 0);
        const rate = total ? `${((100 * w.succeeded) / total).toLocaleString(undefined, { maximumFractionDigits: 1 })} %` : '—';
        return row({}, [label, num(w.succeeded), num(w.failed), rate, ms(w.p50_ms), ms(w.p99_ms)]);
      }),
      'Endpoint stats'),
  ];
}

const prop = (label, value) => h('div', {}, h('dt', {}, label), h('dd', {}, value));
const ms = (value) => (typeof value === 'number' ? `${value.toLocaleString()} ms` : '—');

// The edit form sends only what changed, as a PATCH.
function editForm(ctx, base, initial, refresh) {
  let original = initial;
  const url = h('input', { id: 'edit-url', name: 'url', type: 'url', autocomplete: 'off', spellcheck: 'false', value: original.url });
  const method = h('select', { id: 'edit-method', name: 'method' },
    ['POST', 'PUT', 'PATCH'].map((m) => h('option', { value: m, selected: m === original.method }, m)));
  const ordered = h('input', { id: 'edit-ordered', name: 'ordered', type: 'checkbox', checked: original.ordered });
  const types = h('input', {
    id: 'edit-event-types', name: 'event_types', type: 'text', autocomplete: 'off', spellcheck: 'false',
    placeholder: 'order.*, invoice.paid', 'aria-describedby': 'edit-event-types-help',
    value: (original.filter?.event_types || []).join(', '),
  });
  const expression = h('textarea', {
    id: 'edit-expression', name: 'expression', rows: 3, spellcheck: 'false',
    placeholder: 'payload.amount >= 1000', 'aria-describedby': 'edit-expression-help',
    value: original.filter?.expression || '',
  });
  const out = h('div', { 'aria-live': 'polite' });
  const save = h('button', { type: 'submit', class: 'primary' }, 'Save changes');

  const typeList = (value) => value.split(',').map((t) => t.trim()).filter(Boolean);

  function changes() {
    const patch = {};
    if (url.value.trim() !== original.url) patch.url = url.value.trim();
    if (method.value !== original.method) patch.method = method.value;
    if (ordered.checked !== original.ordered) patch.ordered = ordered.checked;
    const newTypes = typeList(types.value);
    const newExpression = expression.value.trim();
    const oldTypes = original.filter?.event_types || [];
    const oldExpression = original.filter?.expression || '';
    if (JSON.stringify(newTypes) !== JSON.stringify(oldTypes) || newExpression !== oldExpression) {
      patch.filter = newTypes.length || newExpression ? {} : null; // null: no filter
      if (newTypes.length) patch.filter.event_types = newTypes;
      if (newExpression) patch.filter.expression = newExpression;
    }
    return patch;
  }

  const form = h('form', {
    novalidate: true,
    onsubmit(event) {
      event.preventDefault();
      act(save, out, async () => {
        const patch = changes();
        const fields = Object.keys(patch);
        if (!fields.length) return notice('Nothing to change.');
        original = await request('PATCH', base, { body: patch, signal: ctx.signal });
        refresh();
        return `Saved: ${fields.join(', ')}.`;
      });
    },
  },
    h('div', { class: 'field' }, h('label', { for: 'edit-url' }, 'URL'), url),
    h('div', { class: 'field-row' },
      h('div', { class: 'field' }, h('label', { for: 'edit-method' }, 'Method'), method),
      h('div', { class: 'field check' }, ordered, h('label', { for: 'edit-ordered' }, 'Ordered delivery'))),
    h('div', { class: 'field' },
      h('label', { for: 'edit-event-types' }, 'Filter: event types'),
      types,
      h('p', { class: 'help', id: 'edit-event-types-help' }, 'Comma-separated; exact names or prefixes ending in *. Empty: any.')),
    h('div', { class: 'field' },
      h('label', { for: 'edit-expression' }, 'Filter: expression (CEL)'),
      expression,
      h('p', { class: 'help', id: 'edit-expression-help' }, 'Sees event_type, content_type and payload. Both filter fields empty: no filter.')),
    h('div', { class: 'buttons' }, save));
  return [form, out];
}

function actions(ctx, base, refresh) {
  const opts = { signal: ctx.signal };
  const out = h('div', { 'aria-live': 'polite' });

  const enable = h('button', { type: 'button' }, 'Enable');
  enable.addEventListener('click', () => act(enable, out, async () => {
    const answer = await request('POST', `${base}/enable`, opts);
    refresh();
    return `Status ${answer.status}; delivering from offset ${answer.offset}.`;
  }));

  const rotate = h('button', { type: 'button' }, 'Rotate secret');
  const secretOut = h('div', { 'aria-live': 'polite' }); // apart, so that no other outcome hides the secret
  rotate.addEventListener('click', () => {
    if (!window.confirm('Give this subscriber a new signing secret? The old one keeps signing for the overlap period only.')) return;
    act(rotate, secretOut, async () => {
      const { secret } = await request('POST', `${base}/rotate-secret`, opts);
      return h('div', { class: 'secret-box' },
        notice('The new secret is shown only this once: copy it now.', 'warn'),
        h('code', { class: 'secret', tabindex: '0', 'aria-label': 'New signing secret' }, secret));
    });
  });

  const since = h('input', { id: 'replay-since', name: 'since', type: 'datetime-local', step: 1, 'aria-describedby': 'replay-since-help' });
  const replay = h('button', { type: 'submit' }, 'Replay');
  const replayForm = h('form', {
    class: 'inline-form',
    novalidate: true,
    onsubmit(event) {
      event.preventDefault();
      act(replay, out, async () => {
        const at = new Date(since.value); // datetime-local: the user's local time
        if (!since.value || Number.isNaN(at.getTime())) throw new Error('Choose a date and time to replay from.');
        const body = { since: at.toISOString().replace(/\.000Z$/, 'Z') };
        const answer = await request('POST', `${base}/replay`, { body, ...opts });
        refresh();
        return `Replaying ${answer.replayed} message(s) from offset ${answer.from_offset}.`;
      });
    },
  },
    h('div', { class: 'field' },
      h('label', { for: 'replay-since' }, 'Replay since'),
      since,
      h('p', { class: 'help', id: 'replay-since-help' }, 'Your local time; the retained messages from then on are delivered again.')),
    replay);

  return [h('div', { class: 'buttons' }, enable, rotate), secretOut, replayForm, out];
}

function attemptTable(attempts) {
  if (!attempts?.length) return h('p', { class: 'empty' }, 'No attempts recorded yet.');
  return table(['Time', 'Message', 'Attempt', 'Status', 'Duration', 'Response'],
    attempts.map((a) => {
      const ok = typeof a.status === 'number' && a.status >= 200 && a.status < 300;
      const body = a.response
        ? [a.response.encoding === 'base64' ? pill('base64') : null, a.response.body ? longText(a.response.body, 120, `att:${a.id}`) : 'empty']
        : '—';
      return row({ class: ok ? null : 'failed' }, [
        time(a.at),
        [h('code', {}, a.message_id), h('span', { class: 'muted' }, ` @${a.offset}`)],
        num(a.attempt),
        [a.status === null ? null : pill(String(a.status), ok ? 'ok' : 'bad'),
          a.error ? h('span', { class: 'wrap error-text' }, a.error) : null],
        ms(a.duration_ms),
        body,
      ]);
    }),
    'Attempts, newest first');
}

function deadTable(letters, redrive) {
  if (!letters?.length) return h('p', { class: 'empty' }, 'No dead letters.');
  return table(['Message', 'Offset', 'Failed at', 'Last status', 'Reason', 'Attempts', ''],
    letters.map((d) => {
      const button = h('button', { type: 'button', 'data-key': `redrive:${d.message_id}`, 'aria-label': `Redrive ${d.message_id}` }, 'Redrive');
      button.addEventListener('click', () => redrive(button, [d.message_id]));
      return row({ 'data-dead-letter': d.message_id }, [
        h('code', {}, d.message_id), num(d.offset), time(d.failed_at),
        d.last_status === null ? '—' : pill(String(d.last_status), 'bad'),
        h('span', { class: 'wrap' }, text(d.last_error)), num(d.attempts), button,
      ]);
    }),
    'Dead letters, oldest first');
}
