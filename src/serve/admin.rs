//! Admin endpoints: list sessions, close one, close the old ones (the old stack's "cleanup old
//! streams"). Authorisation is checked by the server before these run.

use std::time::Duration;

use serde_json::json;

use super::state::Live;
use super::Server;
use crate::http::request::Request;
use crate::http::response::Response;

/// `GET /sessions`
pub fn list(app: &Server, live: &Live) -> Response {
    let sessions: Vec<_> = app
        .sessions
        .list()
        .into_iter()
        .map(|s| {
            let mut v = serde_json::to_value(&s).unwrap_or_default();
            v["camera"] = json!(live.by_id(s.camera).map(|c| c.name.as_str()));
            v
        })
        .collect();
    Response::json(
        200,
        &json!({
            "active": sessions.len(),
            "capacity": app.sessions.capacity(),
            "sessions": sessions,
        }),
    )
}

/// `DELETE /sessions/ID`
pub fn close(app: &Server, id: u64) -> Response {
    if app.sessions.close(id) {
        Response::json(200, &json!({ "closed": [id] }))
    } else {
        Response::error(404, &format!("no session {id}"))
    }
}

/// `POST /sessions/close?older_than=SECONDS`
pub fn close_older(app: &Server, req: &Request) -> Response {
    let secs = req
        .query_param("older_than")
        .and_then(|v| v.parse::<f64>().ok());
    match secs {
        Some(s) if (0.0..1e9).contains(&s) => {
            let n = app.sessions.close_older_than(Duration::from_secs_f64(s));
            Response::json(200, &json!({ "closed": n, "older_than_s": s }))
        }
        _ => Response::error(
            400,
            "older_than must be a number of seconds, e.g. ?older_than=3600",
        ),
    }
}
