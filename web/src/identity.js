// Who I am to the others in a document: a name and a colour, asked once and kept in localStorage.

import { h } from './dom.js'

const STORAGE_KEY = 'collab.identity'
export const MAX_DISPLAY_NAME = 40

// Saturated enough for a caret and a white label, light enough (with alpha) for a selection.
export const PALETTE = [
  { name: 'Indigo', color: '#4f46e5' },
  { name: 'Rose', color: '#e11d48' },
  { name: 'Emerald', color: '#059669' },
  { name: 'Amber', color: '#d97706' },
  { name: 'Sky', color: '#0284c7' },
  { name: 'Violet', color: '#9333ea' },
  { name: 'Teal', color: '#0d9488' },
  { name: 'Orange', color: '#ea580c' }
]

/** The stored identity, or null if this browser has none yet (or it is unreadable). */
export function loadIdentity () {
  try {
    const stored = JSON.parse(window.localStorage.getItem(STORAGE_KEY))
    if (stored && typeof stored.name === 'string' && stored.name.trim() && /^#[0-9a-f]{6}$/i.test(stored.color)) {
      return { name: stored.name.trim().slice(0, MAX_DISPLAY_NAME), color: stored.color }
    }
  } catch { /* no storage, or not JSON: ask again */ }
  return null
}

export function saveIdentity (identity) {
  try {
    window.localStorage.setItem(STORAGE_KEY, JSON.stringify(identity))
  } catch { /* storage disabled: the identity lasts for this page only */ }
}

/** The awareness `user` field y-codemirror.next draws remote cursors with. */
export function awarenessUser ({ name, color }) {
  return { name, color, colorLight: color + '33' }
}

function randomColor () {
  return PALETTE[Math.floor(Math.random() * PALETTE.length)].color
}

/**
 * Ask for a name and colour in a modal dialog; resolves with the identity once saved.
 * With `current`, the dialog edits it and may be cancelled (resolving with null); without, it must be answered.
 */
export function askIdentity (current = null) {
  return new Promise((resolve) => {
    const chosen = current?.color ?? randomColor()
    const nameInput = h('input', {
      id: 'identity-name',
      name: 'name',
      type: 'text',
      required: true,
      maxlength: MAX_DISPLAY_NAME,
      autocomplete: 'nickname',
      placeholder: 'e.g. Ada',
      value: current?.name ?? ''
    })
    const swatches = PALETTE.map(({ name, color }) =>
      h('label', { class: 'swatch', title: name, style: { '--swatch': color } },
        h('input', { type: 'radio', name: 'color', value: color, checked: color === chosen, 'aria-label': name }),
        h('span', { 'aria-hidden': 'true' })
      )
    )
    const form = h('form', { method: 'dialog', class: 'identity-form' },
      h('h2', {}, current ? 'Your name and colour' : 'Who’s editing?'),
      h('p', { class: 'hint' }, 'Others see your name and colour next to your cursor. They are remembered in this browser.'),
      h('label', { for: 'identity-name', class: 'field-label' }, 'Name'),
      nameInput,
      h('fieldset', { class: 'swatches' }, h('legend', { class: 'field-label' }, 'Colour'), swatches),
      h('div', { class: 'dialog-actions' },
        current ? h('button', { type: 'button', class: 'button ghost', value: 'cancel', onclick: () => finish(null) }, 'Cancel') : null,
        h('button', { type: 'submit', class: 'button primary' }, current ? 'Save' : 'Start editing')
      )
    )
    const dialog = h('dialog', { class: 'dialog identity-dialog', 'aria-labelledby': 'identity-title' }, form)
    form.querySelector('h2').id = 'identity-title'

    function finish (identity) {
      dialog.close()
      dialog.remove()
      resolve(identity)
    }

    form.addEventListener('submit', (event) => {
      event.preventDefault()
      const name = nameInput.value.trim()
      if (!name) {
        nameInput.setCustomValidity('Please type a name.')
        nameInput.reportValidity()
        return
      }
      const identity = { name, color: form.elements.color.value || chosen }
      saveIdentity(identity)
      finish(identity)
    })
    nameInput.addEventListener('input', () => nameInput.setCustomValidity(''))
    dialog.addEventListener('cancel', (event) => {
      // Escape: closes an edit, but the first question needs an answer.
      event.preventDefault()
      if (current) finish(null)
    })
    document.body.append(dialog)
    dialog.showModal()
    nameInput.focus()
    nameInput.select()
  })
}
