// Sign in: the admin token (or a JWT), or none for an open broker.

import { h, notice, fill } from '../dom.js';

export function render(main, { message, kind, onSignIn }) {
  document.title = 'Sign in · Broker console';
  const input = h('input', {
    id: 'token', name: 'token', type: 'password', autocomplete: 'off',
    spellcheck: 'false', 'aria-describedby': 'token-help',
  });
  const problem = h('div', { 'aria-live': 'polite' });

  const form = h('form', {
    class: 'card login',
    novalidate: true,
    onsubmit(event) {
      event.preventDefault();
      const value = input.value.trim();
      if (!value) {
        problem.replaceChildren(notice('Enter a token, or continue without one.', 'error'));
        input.focus();
        return;
      }
      onSignIn(value);
    },
  },
    h('div', { class: 'field' },
      h('label', { for: 'token' }, 'Token'),
      input,
      h('p', { class: 'help', id: 'token-help' },
        'The broker’s admin token, or a JWT. It is kept in this tab only and sent as Authorization: Bearer.')),
    problem,
    h('div', { class: 'buttons' },
      h('button', { type: 'submit', class: 'primary' }, 'Sign in'),
      h('button', { type: 'button', onclick: () => onSignIn('') }, 'Continue without a token')));

  fill(main,
    h('h1', {}, 'Sign in'),
    message ? notice(message, kind) : null,
    form);
  input.focus();
}
