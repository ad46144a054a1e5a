// The Share dialog: a link for someone else, made by the server (POST /api/share) for exactly this document,
// view or edit, with an expiry, and never more than this page's own access. The page's own link is never
// handed out: it carries this person's token. With access control off there is nothing to mint, and the
// dialog offers the document's plain address.

import { formatDateTime, h } from './dom.js'
import { apiProblem, callApi, editorPath } from './names.js'

const EXPIRIES = [
  { value: '1h', label: '1 hour' },
  { value: '1d', label: '1 day' },
  { value: '7d', label: '7 days' },
  { value: '30d', label: '30 days' }
]
const DEFAULT_EXPIRY = '7d'

/**
 * Copy `text` to the clipboard; true if it worked. The clipboard API needs a secure context (plain http on a
 * LAN address is not), so the old way follows, with the field inside `container` (a modal dialog leaves the
 * rest of the page inert, where nothing can be selected).
 */
async function copyText (text, container = document.body) {
  try {
    await navigator.clipboard.writeText(text)
    return true
  } catch {
    const field = h('textarea', { readonly: true, style: { position: 'fixed', opacity: '0' } }, text)
    container.append(field)
    field.select()
    const copied = document.execCommand('copy')
    field.remove()
    return copied
  }
}

/** A read-only field showing `url`, with a Copy button that says when it is done. */
function linkBox (url, container) {
  const field = h('input', { type: 'text', class: 'share-url', readonly: true, value: url, 'aria-label': 'Share link', onfocus: () => field.select() })
  const copy = h('button', { type: 'button', class: 'button primary share-copy' }, 'Copy')
  copy.addEventListener('click', async () => {
    if (!await copyText(url, container)) {
      window.prompt('Copy this link to share the document:', url)
      return
    }
    copy.textContent = 'Copied'
    copy.classList.add('is-done')
    setTimeout(() => {
      copy.textContent = 'Copy'
      copy.classList.remove('is-done')
    }, 2000)
  })
  return h('div', { class: 'share-link' }, field, copy)
}

const absolute = (path) => new URL(path, window.location.origin).href

function openLinkText () {
  return h('p', { class: 'hint' }, 'This server has no access control: anyone with the link can open and edit this document.')
}

function cannotMintText () {
  return h('p', { class: 'share-problem', role: 'alert' },
    'This server can’t create share links: it only checks tokens that another service signs (it runs with ',
    h('code', {}, '--auth-public-key'), '). Ask that service, or whoever gave you your link, for a link to share.')
}

/**
 * Open the Share dialog when `button` is clicked. `getAccess()` is what GET /api/access said about this
 * document (null while unknown: offline, or not answered yet); the dialog asks the server in any case.
 */
export function setUpShare ({ name, button, getAccess }) {
  button.addEventListener('click', () => openShareDialog(name, getAccess()))
}

function openShareDialog (name, access) {
  const body = h('div', { class: 'share-body' })
  // Only Done is in a form (method "dialog": it closes the dialog). The choices are in none, so that Enter
  // on one of them (which submits the form a field is in) does not close the dialog.
  const dialog = h('dialog', { class: 'dialog share-dialog', 'aria-labelledby': 'share-title' },
    h('div', { class: 'share-panel' },
      h('h2', { id: 'share-title' }, 'Share ', h('span', { class: 'share-doc' }, `“${name}”`)),
      body,
      h('form', { method: 'dialog', class: 'dialog-actions' }, h('button', { type: 'submit', class: 'button ghost' }, 'Done'))
    )
  )
  dialog.addEventListener('close', () => dialog.remove())
  dialog.addEventListener('click', (event) => {
    if (event.target === dialog) dialog.close() // a click on the backdrop
  })

  if (access && !access.access_control) {
    body.append(openLinkText(), linkBox(absolute(editorPath(name)), dialog))
  } else if (access && !access.can_share) {
    body.append(cannotMintText())
  } else {
    body.append(shareForm(name, access, dialog))
  }
  document.body.append(dialog)
  dialog.showModal()
}

function shareForm (name, access, dialog) {
  const viewOnly = access?.access === 'view'
  const choice = (value, label, detail, disabled) =>
    h('label', { class: disabled ? 'share-choice is-disabled' : 'share-choice' },
      h('input', { type: 'radio', name: 'share-access', value, checked: value === 'view', disabled, 'aria-label': label, 'aria-description': detail }),
      h('span', { class: 'share-choice-text' }, h('strong', {}, label), h('span', {}, detail))
    )
  const expiry = h('select', { id: 'share-expiry', class: 'share-expiry' },
    EXPIRIES.map(({ value, label }) => h('option', { value, selected: value === DEFAULT_EXPIRY }, label))
  )
  const create = h('button', { type: 'button', class: 'button primary share-create' }, 'Create link')
  const result = h('div', { class: 'share-result', 'aria-live': 'polite' })
  const fields = h('div', { class: 'share-options' },
    h('fieldset', { class: 'share-choices' },
      h('legend', { class: 'field-label' }, 'People with the link can'),
      choice('view', 'View', 'read, not change', false),
      choice('edit', 'Edit', viewOnly ? 'your own access is view only' : 'read and change', viewOnly)
    ),
    h('label', { for: 'share-expiry', class: 'field-label' }, 'The link stops working after'),
    expiry
  )
  // Each request gets a number; an answer is shown only if no other request was made, nor a choice changed,
  // since its own was sent: a link made for other choices is not what the form says any more.
  let requests = 0
  fields.addEventListener('change', () => {
    requests++
    create.disabled = false
    result.replaceChildren()
  })

  create.addEventListener('click', async () => {
    const request = ++requests
    const chosen = fields.querySelector('input[name="share-access"]:checked').value
    const query = new URLSearchParams({ doc: name, access: chosen, expires_in: expiry.value })
    create.disabled = true
    result.replaceChildren(h('p', { class: 'hint' }, 'Creating the link…'))
    let answer
    try {
      answer = await callApi(`/api/share?${query}`, { method: 'POST' })
    } catch (error) {
      answer = error
    }
    if (request !== requests) return
    create.disabled = false
    if (answer instanceof Error) {
      result.replaceChildren(h('p', { class: 'share-problem', role: 'alert' },
        `Couldn’t create a link: ${apiProblem(answer)}. A share link is made by the server, so it needs a connection.`))
    } else if (answer.status === 409) {
      result.replaceChildren(cannotMintText())
    } else if (answer.status !== 200) {
      result.replaceChildren(h('p', { class: 'share-problem', role: 'alert' }, `Couldn’t create a link: ${apiProblem(answer)}.`))
    } else if (!answer.body.access_control) {
      result.replaceChildren(openLinkText(), linkBox(absolute(answer.body.url), dialog))
    } else {
      const { access: granted, expires_at: expiresAt } = answer.body
      result.replaceChildren(
        linkBox(absolute(answer.body.url), dialog),
        h('p', { class: 'share-summary' },
          granted === 'edit' ? 'Anyone with this link can edit' : 'Anyone with this link can view, not edit',
          ` until ${formatDateTime(expiresAt)}.`,
          access?.expires_at && access.expires_at === expiresAt ? ' (Your own access ends then, so the link does too.)' : ''
        )
      )
    }
  })
  return h('div', {}, fields, h('div', { class: 'share-actions' }, create), result)
}
