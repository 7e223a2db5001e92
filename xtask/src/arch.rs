//! Architecture checks that `cargo xtask ci` runs: no two source files of a library crate
//! import each other (the import graph between files has no two-way edge), and the embedded
//! default (`streamhook-core`) pulls in no NATS client.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The crates whose files must not import each other.
const LAYERED: [&str; 3] = [
    "streamhook-core",
    "streamhook-server",
    "streamhook-jetstream",
];

/// Fails when two files of a [`LAYERED`] crate import each other.
pub(crate) fn check_no_mutual_imports(root: &Path) -> Result<()> {
    let mut problems = Vec::new();
    for krate in LAYERED {
        let src = root.join("crates").join(krate).join("src");
        let files = module_files(&src)?;
        let graph = import_graph(&files)?;
        for (from, targets) in &graph {
            for to in targets {
                if from < to && graph.get(to).is_some_and(|t| t.contains(from)) {
                    problems.push(format!(
                        "{krate}: {} and {} import each other",
                        files[from].display(),
                        files[to].display()
                    ));
                }
            }
        }
    }
    if !problems.is_empty() {
        bail!(
            "files that import each other (move what both need into a third file, lower down):\n  {}",
            problems.join("\n  ")
        );
    }
    eprintln!(
        "imports between files: no two-way edges in {}",
        LAYERED.join(", ")
    );
    Ok(())
}

/// Each module of a crate's library (by path, `""` for the root) and its file. `main.rs` is
/// a crate of its own and left out.
fn module_files(src: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let mut out = BTreeMap::new();
    for file in crate::files_under(src)? {
        let rel = file.strip_prefix(src).context("under src")?;
        let rel = rel.to_string_lossy().replace('\\', "/");
        let Some(stem) = rel.strip_suffix(".rs") else {
            continue;
        };
        if stem == "main" || stem.starts_with("bin/") {
            continue;
        }
        let module = match stem {
            "lib" => String::new(),
            s => s.strip_suffix("/mod").unwrap_or(s).replace('/', "::"),
        };
        out.insert(module, file);
    }
    Ok(out)
}

/// Which module files each module file refers to by path (`crate::`, `super::`, `self::`, in
/// `use` items and in code), resolved to the longest module that has a file.
fn import_graph(files: &BTreeMap<String, PathBuf>) -> Result<BTreeMap<String, BTreeSet<String>>> {
    let mut graph = BTreeMap::new();
    for (module, file) in files {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        // A file's test module (last, by the lints) has its own `super`: left out.
        let text = match text.find("#[cfg(test)]\nmod ") {
            Some(at) => text[..at].to_owned(),
            None => text,
        };
        let mut targets = BTreeSet::new();
        // Child modules are named by relative paths too (`use store::Store;`).
        let prefix = if module.is_empty() {
            String::new()
        } else {
            format!("{module}::")
        };
        let children: Vec<&str> = files
            .keys()
            .filter_map(|m| m.strip_prefix(&prefix))
            .filter(|rest| !rest.is_empty() && !rest.contains("::"))
            .collect();
        for path in referenced_paths(&text, &children) {
            let Some(absolute) = absolute(module, &path) else {
                continue;
            };
            if let Some(target) = longest_module(files, &absolute)
                && target != *module
            {
                targets.insert(target);
            }
        }
        graph.insert(module.clone(), targets);
    }
    Ok(graph)
}

/// Every `crate::…`, `super::…` or `self::…` path in the code (comments left out), and every
/// path that starts with one of `children` (relative to the module: `self::` is added), with
/// `a::{b, c::d}` groups expanded.
fn referenced_paths(text: &str, children: &[&str]) -> Vec<Vec<String>> {
    let code: String = text
        .lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let bytes = code.as_bytes();
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        // A path's first segment: not inside another path (`a::b`) or a word.
        let starts_word =
            at == 0 || !(is_ident(bytes[at - 1]) || (at >= 2 && &bytes[at - 2..at] == b"::"));
        let head = ["crate::", "super::", "self::"]
            .into_iter()
            .find(|h| bytes[at..].starts_with(h.as_bytes()));
        let child = children.iter().find(|c| {
            bytes[at..].starts_with(c.as_bytes()) && bytes[at + c.len()..].starts_with(b"::")
        });
        match (head, child) {
            (Some(_), _) if starts_word => {
                let end = path_end(&code, at);
                expand(&code[at..end], &mut out);
                at = end;
            }
            (None, Some(_)) if starts_word => {
                let end = path_end(&code, at);
                expand(&format!("self::{}", &code[at..end]), &mut out);
                at = end;
            }
            _ => at += 1,
        }
    }
    out
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Where a path starting at `at` ends: identifiers, `::`, and balanced `{...}` groups.
fn path_end(code: &str, at: usize) -> usize {
    let bytes = code.as_bytes();
    let mut i = at;
    let mut depth = 0usize;
    while i < bytes.len() {
        let b = bytes[i];
        if is_ident(b) || b == b':' {
            i += 1;
        } else if b == b'{' {
            depth += 1;
            i += 1;
        } else if b == b'}' && depth > 0 {
            depth -= 1;
            i += 1;
        } else if depth > 0 && (b == b',' || b.is_ascii_whitespace() || b == b'*') {
            i += 1;
        } else {
            break;
        }
    }
    i
}

/// `a::{b, c::{d, e}}` -> `a::b`, `a::c::d`, `a::c::e`.
fn expand(path: &str, out: &mut Vec<Vec<String>>) {
    match path.find('{') {
        None => out.push(
            path.split("::")
                .map(str::trim)
                .filter(|s| !s.is_empty() && *s != "*")
                .map(str::to_owned)
                .collect(),
        ),
        Some(open) => {
            let prefix = &path[..open];
            let inner = path[open + 1..]
                .strip_suffix('}')
                .unwrap_or(&path[open + 1..]);
            let mut depth = 0;
            let mut start = 0;
            let mut parts = Vec::new();
            for (i, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        parts.push(&inner[start..i]);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            parts.push(&inner[start..]);
            for part in parts {
                let part = part.trim();
                if part.is_empty() {
                    continue;
                }
                if part == "self" {
                    expand(prefix.trim_end_matches("::"), out);
                } else {
                    expand(&format!("{prefix}{part}"), out);
                }
            }
        }
    }
}

/// The path's segments from the crate's root.
fn absolute(module: &str, path: &[String]) -> Option<Vec<String>> {
    let mut here: Vec<String> = if module.is_empty() {
        Vec::new()
    } else {
        module.split("::").map(str::to_owned).collect()
    };
    let mut rest = path;
    match rest.first()?.as_str() {
        "crate" => {
            here.clear();
            rest = &rest[1..];
        }
        "self" => rest = &rest[1..],
        "super" => {
            // The parent of the module (`a::b` -> `a`, whether `a/b.rs` or `a/b/mod.rs`).
            here.pop()?;
            rest = &rest[1..];
            while rest.first().is_some_and(|s| s == "super") {
                here.pop()?;
                rest = &rest[1..];
            }
        }
        _ => return None,
    }
    here.extend(rest.iter().cloned());
    Some(here)
}

/// The longest prefix of `path` that is a module with a file.
fn longest_module(files: &BTreeMap<String, PathBuf>, path: &[String]) -> Option<String> {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].join("::"))
        .find(|m| files.contains_key(m))
}

/// Architecture invariant: the embedded default compiles without any NATS client.
pub(crate) fn check_core_has_no_nats(root: &Path) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = std::process::Command::new(cargo)
        .current_dir(root)
        .args([
            "tree",
            "--locked",
            "-p",
            "streamhook-core",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .output()
        .context("could not run `cargo tree`")?;
    if !out.status.success() {
        bail!(
            "`cargo tree` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let tree = String::from_utf8_lossy(&out.stdout);
    for line in tree.lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        if name.contains("nats") {
            bail!(
                "streamhook-core depends on {name}: the JetStream backend belongs in \
                 streamhook-jetstream (architecture invariant)"
            );
        }
    }
    eprintln!("streamhook-core: no NATS client in its dependencies");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(code: &str) -> Vec<String> {
        referenced_paths(code, &["w"])
            .into_iter()
            .map(|p| p.join("::"))
            .collect()
    }

    #[test]
    fn groups_are_expanded_and_comments_skipped() {
        let code = "use super::{a::B, c, d::{e, f}};\n// crate::not::this\nlet x = crate::y::z();";
        assert_eq!(
            paths(code),
            [
                "super::a::B",
                "super::c",
                "super::d::e",
                "super::d::f",
                "crate::y::z"
            ]
        );
    }

    #[test]
    fn super_goes_up_from_the_module() {
        let p = |s: &str| s.split("::").map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(
            absolute("journal::writer", &p("super::Journal")),
            Some(p("journal::Journal"))
        );
        assert_eq!(
            absolute("journal", &p("super::backend::Draft")),
            Some(p("backend::Draft"))
        );
        assert_eq!(absolute("a", &p("crate::b::C")), Some(p("b::C")));
    }

    #[test]
    fn a_two_way_edge_is_found() {
        let dir = std::env::temp_dir().join(format!("xtask-arch-{}", std::process::id()));
        let src = dir.join("src");
        std::fs::create_dir_all(src.join("m")).unwrap();
        std::fs::write(src.join("lib.rs"), "mod m;\n").unwrap();
        std::fs::write(src.join("m/mod.rs"), "mod w;\nuse w::X;\npub struct Y;\n").unwrap();
        std::fs::write(src.join("m/w.rs"), "use super::Y;\npub struct X;\n").unwrap();
        let files = module_files(&src).unwrap();
        let graph = import_graph(&files).unwrap();
        assert!(graph["m"].contains("m::w"));
        assert!(graph["m::w"].contains("m"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
