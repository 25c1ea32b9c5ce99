// Sort a table.sortable by the clicked column (the rows of the page shown:
// pages come newest first from storage). A cell's data-sort, if any, is its key.
document.addEventListener("click", (ev) => {
  const th = ev.target.closest("table.sortable thead th");
  if (!th || th.classList.contains("nosort")) return;
  const table = th.closest("table");
  const col = Array.from(th.parentNode.children).indexOf(th);
  const up = th.getAttribute("aria-sort") !== "ascending";
  table.querySelectorAll("thead th").forEach((h) => h.removeAttribute("aria-sort"));
  th.setAttribute("aria-sort", up ? "ascending" : "descending");
  const key = (tr) => {
    const td = tr.children[col];
    const v = td.dataset.sort ?? td.textContent.trim();
    const n = Number(v);
    return v !== "" && !Number.isNaN(n) ? n : v.toLowerCase();
  };
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  rows.sort((a, b) => { const x = key(a), y = key(b); return (x < y ? -1 : x > y ? 1 : 0) * (up ? 1 : -1); });
  rows.forEach((r) => body.appendChild(r));
});
