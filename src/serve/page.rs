//! The `/` page: the first camera's stream and links to every endpoint, for a person with a browser.
//! Every link is relative, so the page works behind a reverse proxy under a path prefix
//! (`/webcam/`, as Mainsail and crowsnest set nginx up).

use super::Live;
use crate::net::Backend;

/// Escapes text for HTML (camera names are restricted, but sources are free text).
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub fn page(live: &Live, backend: Backend) -> String {
    let mut cams = String::new();
    for (i, c) in live.cameras.iter().enumerate() {
        let n = esc(&c.name);
        cams.push_str(&format!(
            "<section><h2>{n}{first}</h2><img src=\"cam/{n}/stream\" alt=\"{n} stream\">\
             <p><a href=\"cam/{n}/stream\">/cam/{n}/stream</a> · <a href=\"cam/{n}/snapshot\">/cam/{n}/snapshot</a> · \
             source <code>{src}</code></p></section>\n",
            first = if i == 0 { " (default)" } else { "" },
            src = esc(&c.spec.to_string()),
        ));
    }
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>beltcam</title>\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <style>body{{font-family:sans-serif;margin:1em;background:#111;color:#ddd}}\
         img{{max-width:100%;background:#000}}a{{color:#8cf}}</style></head><body>\n\
         <h1>beltcam</h1>\n<p><a href=\"stream\">/stream</a> · <a href=\"snapshot\">/snapshot</a> · \
         <a href=\"health\">/health</a> · <a href=\"stats\">/stats</a> · io backend {backend}</p>\n\
         {cams}</body></html>\n",
        backend = backend.as_str(),
    )
}
