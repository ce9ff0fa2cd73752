//! `beltcam devices`: the V4L2 nodes on this machine with their formats, sizes and frame rates.
//!
//! What `v4l2-ctl --list-formats-ext` shows, without needing v4l-utils on the box, plus the stable
//! `/dev/v4l/by-id` names to put in the config and whether beltcam can stream each format. It uses
//! the same enumeration as negotiation, so what it lists is what `open` chooses from.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::capture::v4l2::ioctl::{Caps, DeviceFd};
use crate::capture::v4l2::negotiate::{fourcc_str, FormatOffer};

#[derive(Debug, Serialize)]
pub struct DeviceInfo {
    pub path: PathBuf,
    /// Stable names (`/dev/v4l/by-id/...`, `/dev/v4l/by-path/...`) that point at this node.
    pub links: Vec<PathBuf>,
    #[serde(flatten)]
    pub caps: Caps,
    pub formats: Vec<FormatOffer>,
    /// Why the node could not be queried, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `/dev/videoN` nodes, in numeric order.
pub fn video_nodes(dev: &Path) -> Vec<PathBuf> {
    let mut nodes: Vec<(u32, PathBuf)> = std::fs::read_dir(dev)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n = name.strip_prefix("video")?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    nodes.sort();
    nodes.into_iter().map(|(_, p)| p).collect()
}

fn links_to(node: &Path) -> Vec<PathBuf> {
    let Ok(target) = node.canonicalize() else {
        return Vec::new();
    };
    let mut links = Vec::new();
    for dir in ["/dev/v4l/by-id", "/dev/v4l/by-path"] {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.path().canonicalize().is_ok_and(|t| t == target) {
                links.push(e.path());
            }
        }
    }
    links.sort();
    links
}

/// Queries one node; errors are kept in the result so one bad node does not hide the others.
pub fn describe(path: &Path) -> DeviceInfo {
    let mut info = DeviceInfo {
        path: path.to_path_buf(),
        links: links_to(path),
        caps: Caps::default(),
        formats: Vec::new(),
        error: None,
    };
    let result = DeviceFd::open(path).and_then(|dev| {
        info.caps = dev.caps()?;
        if info.caps.capture {
            info.formats = crate::capture::v4l2::offers(&dev, None)?;
        }
        Ok(())
    });
    if let Err(e) = result {
        info.error = Some(e.to_string());
    }
    info
}

pub fn list() -> Vec<DeviceInfo> {
    video_nodes(Path::new("/dev"))
        .iter()
        .map(|p| describe(p))
        .collect()
}

/// The listing as text, one block per node.
pub fn render_text(devices: &[DeviceInfo]) -> String {
    let mut s = String::new();
    if devices.is_empty() {
        s.push_str("no V4L2 devices (/dev/video*)\n");
    }
    for d in devices {
        let _ = writeln!(
            s,
            "{}: {} ({}, {})",
            d.path.display(),
            d.caps.card,
            d.caps.driver,
            d.caps.bus
        );
        for l in &d.links {
            let _ = writeln!(s, "  also {}", l.display());
        }
        if let Some(e) = &d.error {
            let _ = writeln!(s, "  error: {e}");
            continue;
        }
        if !d.caps.capture {
            let what = if d.caps.capture_mplane {
                "multi-planar capture (not supported yet)"
            } else {
                "not a video capture node"
            };
            let _ = writeln!(s, "  {what}");
            continue;
        }
        for (i, f) in d.formats.iter().enumerate() {
            let note = match (f.usable, f.compressed) {
                (false, _) => "  (not supported)",
                (true, true) => "  (passthrough)",
                (true, false) => "",
            };
            let _ = writeln!(
                s,
                "  [{i}] '{}' ({}){note}",
                fourcc_str(f.fourcc),
                f.description
            );
            if let Some(r) = &f.stepwise {
                let _ = writeln!(s, "      Size: Stepwise {r}");
            }
            for z in &f.sizes {
                let rates: Vec<String> = z.fps.iter().map(|r| format!("{r}")).collect();
                let _ = writeln!(
                    s,
                    "      {}x{} @ {} fps",
                    z.width,
                    z.height,
                    if rates.is_empty() {
                        "?".to_string()
                    } else {
                        rates.join(", ")
                    }
                );
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::v4l2::negotiate::SizeOffer;

    #[test]
    fn nodes_sort_numerically_and_skip_others() {
        let dir = std::env::temp_dir().join(format!("beltcam-devs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for n in ["video10", "video2", "video0", "videofoo", "media0"] {
            std::fs::write(dir.join(n), b"").unwrap();
        }
        let names: Vec<String> = video_nodes(&dir)
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["video0", "video2", "video10"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn text_and_json_show_formats_sizes_and_rates() {
        let d = DeviceInfo {
            path: "/dev/video0".into(),
            links: vec!["/dev/v4l/by-id/usb-cam-video-index0".into()],
            caps: Caps {
                driver: "vivid".into(),
                card: "vivid".into(),
                bus: "platform:vivid-000".into(),
                capture: true,
                capture_mplane: false,
                streaming: true,
            },
            formats: vec![FormatOffer {
                fourcc: *b"YUYV",
                description: "YUYV 4:2:2".into(),
                compressed: false,
                usable: true,
                sizes: vec![SizeOffer {
                    width: 640,
                    height: 480,
                    intervals: vec![(1, 25)],
                    fps: vec![25.0, 12.5],
                }],
                stepwise: None,
            }],
            error: None,
        };
        let text = render_text(std::slice::from_ref(&d));
        assert!(text.contains("'YUYV' (YUYV 4:2:2)"), "{text}");
        assert!(text.contains("640x480 @ 25, 12.5 fps"), "{text}");
        assert!(text.contains("by-id/usb-cam"), "{text}");
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["formats"][0]["fourcc"], "YUYV");
        assert_eq!(json["formats"][0]["sizes"][0]["fps"][1], 12.5);
        assert_eq!(json["driver"], "vivid");
    }
}
