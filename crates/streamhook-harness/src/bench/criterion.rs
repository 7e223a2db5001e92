//! The micro-benchmarks' figures: the mean of every criterion benchmark under the criterion
//! folder (run by `cargo xtask bench` before the harness).

use std::path::Path;

/// One criterion benchmark's mean.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    /// Its path under the criterion folder (`group/benchmark`).
    pub name: String,
    /// Its mean, nanoseconds.
    pub mean_ns: f64,
}

/// Every `new/estimates.json` under `dir`, by name.
pub fn estimates(dir: &Path) -> Vec<Estimate> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.ends_with("new/estimates.json") {
                let name = path
                    .parent()
                    .and_then(Path::parent)
                    .and_then(|p| p.strip_prefix(dir).ok())
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                let mean = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                    .and_then(|v| v["mean"]["point_estimate"].as_f64());
                if let Some(mean_ns) = mean {
                    out.push(Estimate { name, mean_ns });
                }
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}
