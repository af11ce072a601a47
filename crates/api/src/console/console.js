// Postrider console: confirmation of destructive actions and the live event tail.
// Everything shown is set with textContent, never parsed as HTML.
"use strict";

document.addEventListener("submit", (event) => {
  const button = event.submitter;
  const question = button && button.dataset.confirm;
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) {
    td.className = className;
  }
  return td;
}

function eventRow(tbody, e) {
  const row = tbody.insertRow(0);
  cell(row, String(e.seq));
  cell(row, e.at);
  const kind = cell(row, "");
  const badge = document.createElement("span");
  badge.className = "badge " + e.kind;
  badge.textContent = e.kind;
  kind.appendChild(badge);
  const message = cell(row, "");
  const link = document.createElement("a");
  link.className = "id";
  link.href = "/ui/messages/" + encodeURIComponent(e.message);
  link.textContent = e.message;
  message.appendChild(link);
  cell(row, e.recipient);
  cell(row, e.reply, "reply");
  while (tbody.rows.length > 500) {
    tbody.deleteRow(tbody.rows.length - 1);
  }
}

function tailEvents(table) {
  const tbody = table.tBodies[0];
  let cursor = table.dataset.cursor;
  const poll = async () => {
    try {
      const response = await fetch(table.dataset.feed + "?after=" + encodeURIComponent(cursor), {
        credentials: "same-origin",
        headers: { Accept: "application/json" },
      });
      if (response.ok) {
        const page = await response.json();
        for (const e of page.events) {
          eventRow(tbody, e);
        }
        cursor = String(page.next_cursor);
        table.dataset.cursor = cursor;
      }
    } catch (_) {
      // The relay restarted or the network blinked: try again on the next tick.
    }
    window.setTimeout(poll, 2000);
  };
  window.setTimeout(poll, 2000);
}

document.addEventListener("DOMContentLoaded", () => {
  const table = document.getElementById("events");
  if (table && table.dataset.feed) {
    tailEvents(table);
  }
});
