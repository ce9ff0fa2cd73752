//! The `/` page: the operator's console for the belt. Every camera is a tile refreshed from
//! snapshots (one in flight at a time, so any number of cameras fits in a browser's six
//! connections), the camera in focus streams live, and per-camera state, fps, clients, format and
//! recording update from `/events` and `/stats`; the event log, the sessions with a close button
//! (admin) and the health banner. Plain HTML, CSS and JavaScript embedded in the binary
//! (`console.html`), no build step. Every link is relative, so the page works behind a reverse
//! proxy under a path prefix (`/webcam/`, as Mainsail and crowsnest set nginx up).

use super::Live;
use crate::net::Backend;

const CONSOLE: &str = include_str!("console.html");

/// Escapes text for HTML (camera names are restricted, but sources are free text).
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub fn page(live: &Live, backend: Backend) -> String {
    let mut tiles = String::new();
    for c in &live.cameras {
        let n = esc(&c.name);
        tiles.push_str(&format!(
            "<div class=\"tile\" data-cam=\"{n}\"><div class=\"img\"><img alt=\"{n}\"></div>\
             <div class=\"meta\"><b>{n}</b>\
             <span class=\"state\"></span><span class=\"fps\"></span><span class=\"clients\"></span>\
             <span class=\"format\"></span><span class=\"recording\"></span></div>\
             <div class=\"meta\"><code>{src}</code></div></div>\n",
            src = esc(&c.spec.to_string()),
        ));
    }
    let first = live
        .cameras
        .first()
        .map(|c| esc(&c.name))
        .unwrap_or_default();
    CONSOLE
        .replace("{{BACKEND}}", backend.as_str())
        .replace("{{FIRST}}", &first)
        .replace("{{TILES}}", &tiles)
}
