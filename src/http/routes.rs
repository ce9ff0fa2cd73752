//! Routing: request method and path to an endpoint. Pure, so every URL clients use is unit-tested.
//!
//! Drop-in URLs: ustreamer serves `/stream`, `/snapshot`, `/state` (its own JSON shape, not
//! `/stats`); mjpg-streamer serves `/?action=stream` and `/?action=snapshot`. OctoPrint, Home
//! Assistant, Frigate and kvmd configs carry these verbatim, so both sets map to the first camera.

use super::request::{Method, Request};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Index,
    Stream(usize),
    Snapshot(usize),
    Health,
    Stats,
    /// ustreamer's `/state` document for one camera.
    State(usize),
    /// What a recording camera keeps on disk.
    Recordings(usize),
    /// A V4L2 camera's controls (`GET /cam/NAME/controls`).
    Controls(usize),
    /// Sets one control (`PUT /cam/NAME/controls/CONTROL`); the name is the path's last segment.
    ControlSet(usize),
    Metrics,
    /// Server-Sent Events; `?camera=NAME` is resolved by the server.
    Events,
    Sessions,
    SessionClose(u64),
    SessionsCloseOlder,
}

impl Route {
    /// Admin endpoints need the admin token (or loopback when none is set).
    pub fn is_admin(self) -> bool {
        matches!(
            self,
            Route::Sessions
                | Route::SessionClose(_)
                | Route::SessionsCloseOlder
                | Route::ControlSet(_)
        )
    }

    /// Viewer endpoints need viewer credentials when they are configured.
    pub fn is_viewer(self) -> bool {
        matches!(
            self,
            Route::Index
                | Route::Stream(_)
                | Route::Snapshot(_)
                | Route::Events
                | Route::Recordings(_)
                | Route::Controls(_)
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteError {
    NotFound,
    /// The path exists but not for this method; carries the `Allow` header value.
    MethodNotAllowed(&'static str),
}

/// Resolves a request. `camera` maps a camera name to its index.
pub fn route(req: &Request, camera: impl Fn(&str) -> Option<usize>) -> Result<Route, RouteError> {
    const READ: &str = "GET, HEAD";
    let (r, allow) = match req.path.as_str() {
        "/metrics" => (Route::Metrics, READ),
        "/events" => (Route::Events, "GET"),
        "/sessions" => (Route::Sessions, READ),
        "/sessions/close" => (Route::SessionsCloseOlder, "POST"),
        p if p.starts_with("/sessions/") => {
            let id = p["/sessions/".len()..]
                .parse()
                .map_err(|_| RouteError::NotFound)?;
            (Route::SessionClose(id), "DELETE")
        }
        p if control_path(p).is_some() => {
            let (cam, _) = control_path(p).ok_or(RouteError::NotFound)?;
            (
                Route::ControlSet(camera(cam).ok_or(RouteError::NotFound)?),
                "PUT",
            )
        }
        _ => (read_route(req, camera)?, READ),
    };
    let ok = match req.method {
        Method::Get => allow.contains("GET"),
        Method::Head => allow.contains("HEAD"),
        Method::Post => allow == "POST",
        Method::Put => allow == "PUT",
        Method::Delete => allow == "DELETE",
        Method::Other => false,
    };
    if ok {
        Ok(r)
    } else {
        Err(RouteError::MethodNotAllowed(allow))
    }
}

/// The read-only endpoints: the page, streams, snapshots, health, stats.
fn read_route(req: &Request, camera: impl Fn(&str) -> Option<usize>) -> Result<Route, RouteError> {
    let r = match (req.path.as_str(), req.query_param("action")) {
        ("/", Some("stream")) => Route::Stream(0),
        ("/", Some("snapshot")) => Route::Snapshot(0),
        ("/", Some(_)) => return Err(RouteError::NotFound),
        ("/" | "/index.html", None) => Route::Index,
        ("/stream", _) => Route::Stream(0),
        ("/snapshot", _) => Route::Snapshot(0),
        ("/health", _) => Route::Health,
        ("/stats", _) => Route::Stats,
        ("/state", _) => Route::State(0),
        (path, _) => camera_route(path, &camera).ok_or(RouteError::NotFound)?,
    };
    Ok(r)
}

fn camera_route(path: &str, camera: &impl Fn(&str) -> Option<usize>) -> Option<Route> {
    let rest = path.strip_prefix("/cam/")?;
    let (name, what) = rest.split_once('/')?;
    let idx = camera(name)?;
    match what {
        "stream" => Some(Route::Stream(idx)),
        "snapshot" => Some(Route::Snapshot(idx)),
        "state" => Some(Route::State(idx)),
        "recordings" => Some(Route::Recordings(idx)),
        "controls" => Some(Route::Controls(idx)),
        _ => None,
    }
}

/// `/cam/CAMERA/controls/CONTROL`: the camera's and the control's names (neither empty).
pub fn control_path(path: &str) -> Option<(&str, &str)> {
    let (cam, control) = path.strip_prefix("/cam/")?.split_once("/controls/")?;
    let ok = |s: &str| !s.is_empty() && !s.contains('/');
    (ok(cam) && ok(control)).then_some((cam, control))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::parse;

    /// Routes a request line (the helper adds the Host header HTTP/1.1 requires).
    fn r(raw: &str) -> Result<Route, RouteError> {
        let raw = raw.replacen("\r\n", "\r\nHost: t\r\n", 1);
        let req = parse(raw.as_bytes()).unwrap().unwrap();
        route(&req, |n| ["front", "back"].iter().position(|c| *c == n))
    }

    #[test]
    fn encoded_and_absolute_form_urls_reach_the_same_routes() {
        assert_eq!(
            r("GET /cam/f%72ont/stream HTTP/1.1\r\n\r\n"),
            Ok(Route::Stream(0))
        );
        assert_eq!(
            r("GET /cam/back/sn%61pshot HTTP/1.1\r\n\r\n"),
            Ok(Route::Snapshot(1))
        );
        assert_eq!(
            r("GET http://cam:8080/stream HTTP/1.1\r\n\r\n"),
            Ok(Route::Stream(0))
        );
        assert_eq!(
            r("GET http://cam/?action=snapshot HTTP/1.1\r\n\r\n"),
            Ok(Route::Snapshot(0))
        );
    }

    #[test]
    fn ustreamer_and_mjpg_streamer_urls() {
        assert_eq!(r("GET /stream HTTP/1.1\r\n\r\n"), Ok(Route::Stream(0)));
        assert_eq!(r("GET /snapshot HTTP/1.1\r\n\r\n"), Ok(Route::Snapshot(0)));
        assert_eq!(
            r("GET /?action=stream HTTP/1.1\r\n\r\n"),
            Ok(Route::Stream(0))
        );
        assert_eq!(
            r("GET /?action=snapshot&n=1 HTTP/1.1\r\n\r\n"),
            Ok(Route::Snapshot(0))
        );
        assert_eq!(r("GET /state HTTP/1.1\r\n\r\n"), Ok(Route::State(0)));
        assert_eq!(r("GET /stats HTTP/1.1\r\n\r\n"), Ok(Route::Stats));
        assert_eq!(
            r("GET /stream?extra_headers=1 HTTP/1.1\r\n\r\n"),
            Ok(Route::Stream(0))
        );
    }

    #[test]
    fn per_camera_urls() {
        assert_eq!(
            r("GET /cam/back/stream HTTP/1.1\r\n\r\n"),
            Ok(Route::Stream(1))
        );
        assert_eq!(
            r("HEAD /cam/front/snapshot HTTP/1.1\r\n\r\n"),
            Ok(Route::Snapshot(0))
        );
        assert_eq!(
            r("GET /cam/back/state HTTP/1.1\r\n\r\n"),
            Ok(Route::State(1))
        );
        assert_eq!(
            r("GET /cam/side/state HTTP/1.1\r\n\r\n"),
            Err(RouteError::NotFound)
        );
        assert_eq!(
            r("GET /cam/side/stream HTTP/1.1\r\n\r\n"),
            Err(RouteError::NotFound)
        );
        assert_eq!(
            r("GET /cam/front/x HTTP/1.1\r\n\r\n"),
            Err(RouteError::NotFound)
        );
    }

    #[test]
    fn admin_and_observability_urls() {
        assert_eq!(r("GET /metrics HTTP/1.1\r\n\r\n"), Ok(Route::Metrics));
        assert_eq!(
            r("GET /events?camera=back HTTP/1.1\r\n\r\n"),
            Ok(Route::Events)
        );
        assert_eq!(r("GET /sessions HTTP/1.1\r\n\r\n"), Ok(Route::Sessions));
        assert_eq!(
            r("DELETE /sessions/42 HTTP/1.1\r\n\r\n"),
            Ok(Route::SessionClose(42))
        );
        assert_eq!(
            r("POST /sessions/close?older_than=60 HTTP/1.1\r\n\r\n"),
            Ok(Route::SessionsCloseOlder)
        );
        assert_eq!(
            r("DELETE /sessions/x HTTP/1.1\r\n\r\n"),
            Err(RouteError::NotFound)
        );
        assert_eq!(
            r("GET /sessions/42 HTTP/1.1\r\n\r\n"),
            Err(RouteError::MethodNotAllowed("DELETE"))
        );
        assert_eq!(
            r("GET /sessions/close HTTP/1.1\r\n\r\n"),
            Err(RouteError::MethodNotAllowed("POST"))
        );
        assert!(Route::SessionClose(1).is_admin() && !Route::Metrics.is_admin());
        assert!(Route::Events.is_viewer() && !Route::Health.is_viewer());
    }

    #[test]
    fn control_urls() {
        assert_eq!(
            r("GET /cam/back/controls HTTP/1.1\r\n\r\n"),
            Ok(Route::Controls(1))
        );
        assert_eq!(
            r("PUT /cam/front/controls/brightness?value=3 HTTP/1.1\r\n\r\n"),
            Ok(Route::ControlSet(0))
        );
        assert_eq!(
            r("GET /cam/front/controls/brightness HTTP/1.1\r\n\r\n"),
            Err(RouteError::MethodNotAllowed("PUT"))
        );
        assert_eq!(
            r("PUT /cam/front/controls HTTP/1.1\r\n\r\n"),
            Err(RouteError::MethodNotAllowed("GET, HEAD"))
        );
        assert_eq!(
            r("PUT /cam/side/controls/brightness HTTP/1.1\r\n\r\n"),
            Err(RouteError::NotFound)
        );
        assert_eq!(
            r("PUT /cam/front/controls/a/b HTTP/1.1\r\n\r\n"),
            Err(RouteError::NotFound)
        );
        assert_eq!(
            r("PUT /cam/front/controls/ HTTP/1.1\r\n\r\n"),
            Err(RouteError::NotFound)
        );
        assert_eq!(
            control_path("/cam/front/controls/white_balance_automatic"),
            Some(("front", "white_balance_automatic"))
        );
        assert!(Route::ControlSet(0).is_admin() && !Route::ControlSet(0).is_viewer());
        assert!(Route::Controls(0).is_viewer() && !Route::Controls(0).is_admin());
    }

    #[test]
    fn unknown_and_wrong_method() {
        assert_eq!(r("GET /nope HTTP/1.1\r\n\r\n"), Err(RouteError::NotFound));
        assert_eq!(
            r("GET /?action=x HTTP/1.1\r\n\r\n"),
            Err(RouteError::NotFound)
        );
        assert_eq!(
            r("POST /stream HTTP/1.1\r\n\r\n"),
            Err(RouteError::MethodNotAllowed("GET, HEAD"))
        );
        assert_eq!(
            r("BREW /health HTTP/1.1\r\n\r\n"),
            Err(RouteError::MethodNotAllowed("GET, HEAD"))
        );
    }
}
