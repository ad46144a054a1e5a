// What the pages share about the page itself: finding an element, building one, and saying sizes and times
// the way a person reads them (in the reader's own language and time zone).

/** The first element of the page that `selector` matches, or null. */
export const $ = (selector) => document.querySelector(selector)

// A tiny element builder: h('a', { href: '/', class: 'brand' }, 'collab'). Text is always set as text, never HTML.

export function h (tag, attributes = {}, ...children) {
  const element = document.createElement(tag)
  for (const [key, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue
    if (key.startsWith('on')) element.addEventListener(key.slice(2), value)
    else if (key === 'style' && typeof value === 'object') {
      for (const [property, setting] of Object.entries(value)) element.style.setProperty(property.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase()), setting)
    }
    else element.setAttribute(key, value === true ? '' : String(value))
  }
  element.append(...children.flat().filter((child) => child !== null && child !== undefined && child !== false))
  return element
}

/** Initials for an avatar: "Ada Lovelace" -> "AL", "grace" -> "G". */
export function initials (name) {
  const words = name.trim().split(/\s+/).filter(Boolean)
  const letters = words.length > 1 ? [words[0], words[words.length - 1]] : words
  return letters.map((word) => [...word][0].toUpperCase()).join('') || '?'
}

/** A size in bytes for a person: "512 B", "1.5 KB", "42 KB", "3.2 MB", "2.0 GB" (powers of 1024). */
export function formatSize (bytes) {
  if (bytes < 1024) return `${bytes} B`
  const units = ['KB', 'MB', 'GB']
  let value = bytes
  let unit = -1
  do {
    value /= 1024
    unit++
  } while (value >= 1024 && unit < units.length - 1)
  return `${value < 10 ? value.toFixed(1) : Math.round(value)} ${units[unit]}`
}

const relativeTime = new Intl.RelativeTimeFormat(undefined, { numeric: 'auto' })
const dateAndTime = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' })
const RELATIVE_STEPS = [[60, 'second'], [60, 'minute'], [24, 'hour'], [7, 'day'], [4.35, 'week'], [12, 'month'], [Infinity, 'year']]

/**
 * How far `when` (a Date, an ISO 8601 string or milliseconds since 1970) is from `now`, for a person:
 * "just now" (under 45 s either way), "5 minutes ago", "yesterday", "in 3 days", "last year".
 */
export function formatWhen (when, now = Date.now()) {
  let value = (new Date(when).getTime() - new Date(now).getTime()) / 1000
  for (const [size, unit] of RELATIVE_STEPS) {
    if (Math.abs(value) < size) {
      return unit === 'second' && Math.abs(value) < 45 ? 'just now' : relativeTime.format(Math.round(value), unit)
    }
    value /= size
  }
}

/** `when` (a Date, an ISO 8601 string or milliseconds since 1970) as a date and a clock time: "Dec 1, 2026, 7:37 PM". */
export function formatDateTime (when) {
  return dateAndTime.format(new Date(when))
}
