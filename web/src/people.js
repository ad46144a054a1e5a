// The people in a document, in the editor's header: one chip per person from the awareness states, as many
// as fit, and a "+N" button for the rest that opens a list of everyone. However many come, the header keeps
// its size: the chips that do not fit are hidden, last first, never squeezed past the screen's edge.

import { h, initials } from './dom.js'

const $ = (selector) => document.querySelector(selector)

/** The colour of someone whose page sent none a page may draw (any other string could be any CSS). */
const NO_COLOUR = '#8c959f'
/** The longest name shown: awareness states come from anyone's page, and a name has no other limit there. */
export const MAX_SHOWN_NAME = 64

/**
 * Everyone in `awareness`, one entry per person (same name and colour), however many tabs they have open;
 * me first, then by name. A state with no `user` is someone whose page has not said who they are yet.
 */
export function peopleIn (awareness) {
  const people = new Map()
  for (const [clientID, state] of awareness.getStates()) {
    const user = state.user
    const isMe = clientID === awareness.clientID
    if (!user && isMe) continue
    const { name, color } = drawableUser(user)
    const key = `${name}\u0000${color}`
    const person = people.get(key) ?? { name, color, isMe: false }
    person.isMe ||= isMe
    people.set(key, person)
  }
  return [...people.values()].sort((a, b) => (b.isMe - a.isMe) || a.name.localeCompare(b.name))
}

/**
 * `user`, an awareness state's (from anyone's page), as it may be drawn: a name of at most MAX_SHOWN_NAME
 * characters ("Anonymous" for none) and a `#rrggbb` colour (grey for anything else: a colour goes into style
 * attributes and CSS properties, where any other string could be any CSS).
 */
export function drawableUser (user) {
  const name = typeof user?.name === 'string' ? [...user.name.trim()].slice(0, MAX_SHOWN_NAME).join('').trim() : ''
  const color = typeof user?.color === 'string' && /^#[0-9a-f]{6}$/i.test(user.color) ? user.color : NO_COLOUR
  return { name: name || 'Anonymous', color, colorLight: color + '33' }
}

/**
 * Keep every other person's awareness `user` drawable (see drawableUser). y-codemirror draws their cursors
 * and selections with it, the colour pasted into a style attribute as it comes, so this must run first: call
 * it before the editor is created (an awareness calls its listeners in the order they were added).
 */
export function checkPeople (awareness) {
  awareness.on('change', ({ added, updated }) => {
    for (const clientID of [...added, ...updated]) {
      const state = awareness.getStates().get(clientID)
      if (clientID !== awareness.clientID && state?.user) state.user = drawableUser(state.user)
    }
  })
}

/** A person's round badge: their initials on their colour (a checked `#rrggbb`: see peopleIn). */
export function avatar (person) {
  return h('span', { class: 'avatar', style: { '--person': person.color }, 'aria-hidden': 'true' }, initials(person.name))
}

/**
 * Show the people of `awareness` in the header's #people list, its #people-more button and #people-list
 * popover, and keep them current: on every awareness change and whenever the room in the header changes.
 */
export function setUpPeople (awareness) {
  const list = $('#people')
  const more = $('#people-more')
  const popover = $('#people-list')
  const topbar = list.closest('.topbar')
  let people = []
  let shown = null // who the chips show, as one string: a cursor moving changes awareness, not this

  const render = () => {
    people = peopleIn(awareness)
    const who = JSON.stringify(people)
    if (who === shown) return
    shown = who
    list.replaceChildren(...people.map((person) =>
      h('li', { class: person.isMe ? 'person is-me' : 'person', title: person.isMe ? `${person.name} (you)` : person.name },
        avatar(person),
        h('span', { class: 'person-name' }, person.name),
        person.isMe ? h('span', { class: 'sr-only' }, ' (you)') : null
      )
    ))
    list.setAttribute('aria-label', `${people.length} ${people.length === 1 ? 'person' : 'people'} in this document`)
    fit()
    if (!popover.hidden) renderPopover()
  }

  // Hide chips from the end until the list and the header hold what is left without overflowing. Each
  // step asks the browser for the layout once; the count of steps is bounded by the people shown.
  const fit = () => {
    const chips = [...list.querySelectorAll('.person:not(.is-me)')]
    for (const chip of chips) chip.hidden = false
    more.hidden = true
    const overflows = () =>
      list.scrollWidth > list.clientWidth + 1 ||
      topbar.scrollWidth > topbar.clientWidth + 1 ||
      document.documentElement.scrollWidth > document.documentElement.clientWidth
    let hidden = 0
    while (hidden < chips.length && overflows()) {
      chips[chips.length - 1 - hidden].hidden = true
      hidden++
      more.hidden = false
      more.textContent = `+${hidden}`
      more.setAttribute('aria-label', `${hidden} more: show everyone in this document (${people.length})`)
    }
    if (hidden === 0 && !popover.hidden) closePopover()
  }

  const renderPopover = () => {
    popover.replaceChildren(
      h('h2', { class: 'people-list-title', id: 'people-list-title' },
        `${people.length} ${people.length === 1 ? 'person' : 'people'} here`),
      h('ul', { class: 'people-list-items' }, people.map((person) =>
        h('li', { class: 'people-list-item' },
          avatar(person),
          h('span', { class: 'people-list-name' }, person.name),
          person.isMe ? h('span', { class: 'people-list-you' }, 'you') : null
        )
      ))
    )
    place()
  }

  // Under the button, kept inside the window: on a phone the button sits mid-screen.
  const place = () => {
    const button = more.getBoundingClientRect()
    const width = popover.offsetWidth
    const left = Math.max(8, Math.min(button.right - width, window.innerWidth - width - 8))
    popover.style.left = `${left}px`
    popover.style.top = `${button.bottom + 6}px`
  }

  const openPopover = () => {
    popover.hidden = false
    more.setAttribute('aria-expanded', 'true')
    renderPopover()
    document.addEventListener('pointerdown', onOutside, true)
    document.addEventListener('keydown', onKey, true)
  }

  const closePopover = () => {
    popover.hidden = true
    more.setAttribute('aria-expanded', 'false')
    document.removeEventListener('pointerdown', onOutside, true)
    document.removeEventListener('keydown', onKey, true)
  }

  const onOutside = (event) => {
    if (!popover.contains(event.target) && !more.contains(event.target)) closePopover()
  }

  const onKey = (event) => {
    if (event.key === 'Escape') {
      closePopover()
      more.focus()
    }
  }

  more.addEventListener('click', () => (popover.hidden ? openPopover() : closePopover()))
  awareness.on('change', render)
  // What fits changes with the bar's width and with the sizes of its other pieces (the status's label, the
  // "me" button once named); fitting changes only the list and the document's name, which are not watched.
  const resized = new ResizeObserver(() => {
    fit()
    if (!popover.hidden) place()
  })
  for (const piece of [topbar, ...topbar.querySelectorAll('.topbar-tools > :not(.people):not(.people-more), .readonly-badge')]) {
    resized.observe(piece)
  }
  render()
}
