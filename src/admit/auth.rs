//! Viewer and admin authentication: HTTP Basic for viewers (optional), a bearer token for admins.
//!
//! Secrets come from files (so systemd's LoadCredential can supply them) and are compared in
//! constant time. With no admin token configured, the admin endpoints answer only on loopback: a
//! box on a factory LAN must not let anyone close the operators' streams.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use base64::Engine;
use subtle::ConstantTimeEq;

use crate::config::{AuthConfig, ConfigError};
use crate::limits::MAX_VIEWER_CREDENTIALS;

pub struct Auth {
    viewers: Option<Vec<(Vec<u8>, Vec<u8>)>>,
    admin_token: Option<Vec<u8>>,
}

/// What an admin request lacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denied {
    /// 401: credentials missing or wrong.
    Unauthorized,
    /// 403: not allowed from here at all (no token configured, not loopback).
    Forbidden,
}

fn read_secret(key: &str, path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        key: key.into(),
        reason: format!("{}: {e}", path.display()),
    })
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

impl Auth {
    pub fn open() -> Self {
        Auth {
            viewers: None,
            admin_token: None,
        }
    }

    pub fn load(cfg: &AuthConfig) -> Result<Self, ConfigError> {
        let viewers = match &cfg.viewers_file {
            None => None,
            Some(p) => {
                let text = read_secret("auth.viewers_file", p)?;
                let creds: Vec<_> = text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .filter_map(|l| l.split_once(':'))
                    .map(|(u, p)| (u.as_bytes().to_vec(), p.as_bytes().to_vec()))
                    .collect();
                if creds.is_empty() || creds.len() > MAX_VIEWER_CREDENTIALS {
                    return Err(ConfigError {
                        key: "auth.viewers_file".into(),
                        reason: format!(
                            "{}: needs 1 to {MAX_VIEWER_CREDENTIALS} user:password lines",
                            p.display()
                        ),
                    });
                }
                Some(creds)
            }
        };
        let token_path = cfg.admin_token_file.clone().or_else(|| {
            let p = PathBuf::from(std::env::var_os("CREDENTIALS_DIRECTORY")?).join("admin-token");
            p.exists().then_some(p)
        });
        let admin_token = match token_path {
            None => None,
            Some(p) => {
                let t = read_secret("auth.admin_token_file", &p)?.trim().to_string();
                if t.len() < 16 {
                    return Err(ConfigError {
                        key: "auth.admin_token_file".into(),
                        reason: format!(
                            "{}: the token must be at least 16 characters",
                            p.display()
                        ),
                    });
                }
                Some(t.into_bytes())
            }
        };
        Ok(Auth {
            viewers,
            admin_token,
        })
    }

    pub fn viewers_required(&self) -> bool {
        self.viewers.is_some()
    }

    /// Whether `authorization` (the header's value) admits a viewer.
    pub fn viewer_ok(&self, authorization: Option<&str>) -> bool {
        let Some(creds) = &self.viewers else {
            return true;
        };
        let Some(b64) = authorization.and_then(|a| credentials(a, "Basic")) else {
            return false;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else {
            return false;
        };
        let Some(colon) = decoded.iter().position(|&b| b == b':') else {
            return false;
        };
        let (user, pass) = (&decoded[..colon], &decoded[colon + 1..]);
        // Check every entry, so the time taken does not say which user exists.
        creds.iter().fold(false, |found, (u, p)| {
            found | (ct_eq(u, user) & ct_eq(p, pass))
        })
    }

    /// Whether a request from `peer` with `authorization` may use admin endpoints.
    pub fn admin(&self, peer: IpAddr, authorization: Option<&str>) -> Result<(), Denied> {
        match &self.admin_token {
            None if peer.to_canonical().is_loopback() => Ok(()),
            None => Err(Denied::Forbidden),
            Some(token) => {
                let given = authorization
                    .and_then(|a| credentials(a, "Bearer"))
                    .map(str::trim)
                    .unwrap_or("");
                if ct_eq(given.as_bytes(), token) {
                    Ok(())
                } else {
                    Err(Denied::Unauthorized)
                }
            }
        }
    }
}

/// The credentials after `scheme` in an Authorization value. The scheme name is case-insensitive
/// (RFC 9110 §11.1: curl sends `Basic`, some clients and proxies `basic` or `BEARER`).
fn credentials<'a>(authorization: &'a str, scheme: &str) -> Option<&'a str> {
    let (name, rest) = authorization.trim_start().split_once([' ', '\t'])?;
    name.eq_ignore_ascii_case(scheme).then_some(rest.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_files(viewers: Option<&str>, token: Option<&str>) -> Auth {
        let dir = std::env::temp_dir().join(format!(
            "beltcam-auth-{}-{}",
            std::process::id(),
            viewers.is_some() as u8 + 2 * token.is_some() as u8
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cfg = AuthConfig::default();
        if let Some(v) = viewers {
            std::fs::write(dir.join("viewers"), v).unwrap();
            cfg.viewers_file = Some(dir.join("viewers"));
        }
        if let Some(t) = token {
            std::fs::write(dir.join("token"), t).unwrap();
            cfg.admin_token_file = Some(dir.join("token"));
        }
        Auth::load(&cfg).unwrap()
    }

    fn basic(u: &str, p: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        )
    }

    #[test]
    fn open_by_default_and_admin_only_on_loopback() {
        let a = Auth::open();
        assert!(a.viewer_ok(None));
        assert_eq!(a.admin("127.0.0.1".parse().unwrap(), None), Ok(()));
        assert_eq!(a.admin("::1".parse().unwrap(), None), Ok(()));
        assert_eq!(
            a.admin("192.168.1.9".parse().unwrap(), None),
            Err(Denied::Forbidden)
        );
    }

    #[test]
    fn basic_auth_checks_user_and_password() {
        let a = with_files(Some("# operators\nalice:s3cret\nbob:hunter2:x\n"), None);
        assert!(a.viewer_ok(Some(&basic("alice", "s3cret"))));
        assert!(
            a.viewer_ok(Some(&basic("bob", "hunter2:x"))),
            "passwords may hold ':'"
        );
        assert!(!a.viewer_ok(Some(&basic("alice", "wrong"))));
        assert!(!a.viewer_ok(Some(&basic("mallory", "s3cret"))));
        assert!(!a.viewer_ok(Some("Basic !!!notbase64")));
        assert!(!a.viewer_ok(None));
    }

    #[test]
    fn scheme_names_are_case_insensitive() {
        let a = with_files(Some("op:belt-2026\n"), Some("0123456789abcdef-token\n"));
        let b64 = basic("op", "belt-2026");
        let b64 = b64.strip_prefix("Basic ").unwrap();
        for scheme in ["Basic", "basic", "BASIC", "bAsIc"] {
            assert!(a.viewer_ok(Some(&format!("{scheme} {b64}"))), "{scheme}");
        }
        assert!(!a.viewer_ok(Some(&format!("Bearer {b64}"))));
        assert!(!a.viewer_ok(Some(&format!("Basicx {b64}"))));
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        for scheme in ["Bearer", "bearer", "BEARER"] {
            let h = format!("{scheme} 0123456789abcdef-token");
            assert_eq!(a.admin(lo, Some(&h)), Ok(()), "{scheme}");
        }
        assert_eq!(
            a.admin(lo, Some("Basic 0123456789abcdef-token")),
            Err(Denied::Unauthorized)
        );
    }

    #[test]
    fn bearer_token_required_everywhere_when_set() {
        let a = with_files(None, Some("0123456789abcdef-token\n"));
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(a.admin(lo, None), Err(Denied::Unauthorized));
        assert_eq!(a.admin(lo, Some("Bearer nope")), Err(Denied::Unauthorized));
        assert_eq!(a.admin(lo, Some("Bearer 0123456789abcdef-token")), Ok(()));
        assert_eq!(
            a.admin(
                "10.0.0.1".parse().unwrap(),
                Some("Bearer 0123456789abcdef-token")
            ),
            Ok(())
        );
    }
}
