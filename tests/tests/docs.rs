//! The docs cannot drift: every code block marked `sh` or `shell` in
//! README.md and docs/*.md is run, as written, against a node started like
//! `make run` starts one (`examples/standalone.toml`: the sample rules,
//! the tokens `admin-token` and `ingest-token`). The only rewrites are
//! where things are: the node's address instead of `127.0.0.1:8080`, its
//! database instead of `data/tandem.db`, the binary under test instead of
//! `./target/release/tandem`, and `curl` made to fail on an HTTP error.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tandem_tests::node::NodeProc;
use tandem_tests::{repo_root, run_with_limit, sample_wasm, tandem_bin};

/// The `sh`/`shell` blocks of `text`: (line of the opening fence, body).
fn shell_blocks(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, bool, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let fence = line.trim_start().strip_prefix("```");
        match (&mut current, fence) {
            (None, Some(info)) => {
                let shell = matches!(info.trim(), "sh" | "shell" | "bash");
                current = Some((i + 1, shell, String::new()));
            }
            (Some(_), Some(_)) => {
                if let Some((line, true, body)) = current.take() {
                    out.push((line, body));
                }
            }
            (Some((_, _, body)), None) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    out
}

fn doc_files() -> Vec<PathBuf> {
    let root = repo_root();
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// A node configured as `examples/standalone.toml`, in `dir`.
fn start_like_make_run(dir: &Path) -> NodeProc {
    let example =
        std::fs::read_to_string(repo_root().join("examples/standalone.toml")).expect("example");
    let rules = dir.join("data/rules");
    std::fs::create_dir_all(&rules).expect("mkdir");
    for (file, krate) in [
        ("panic_button", "panic_button"),
        ("failover_notify", "failover_notify"),
        ("door_held_open", "door_held_open"),
        ("threshold", "threshold"),
    ] {
        std::fs::copy(sample_wasm(krate), rules.join(format!("{file}.wasm"))).expect("copy");
    }
    let config = example
        .replace("\"./data\"", &format!("\"{}\"", dir.join("data").display()))
        .replace("\"./data/rules\"", &format!("\"{}\"", rules.display()))
        .replace("127.0.0.1:8080", "127.0.0.1:0");
    let path = dir.join("standalone.toml");
    std::fs::write(&path, config).expect("config");
    NodeProc::start(dir, &path)
}

fn rewrite(block: &str, node: &NodeProc) -> String {
    let bin = tandem_bin();
    let bin = bin.to_str().expect("utf-8 path");
    block
        .replace("http://127.0.0.1:8080", node.admin())
        .replace("data/tandem.db", node.db().to_str().expect("utf-8 path"))
        .replace("./target/release/tandem", bin)
        .lines()
        .map(|l| {
            let l = l.replacen("curl ", "curl --fail-with-body --max-time 30 ", 1);
            match l.strip_prefix("tandem ") {
                Some(rest) => format!("{bin} {rest}"),
                None => l,
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_fence_parser_finds_shell_blocks_only() {
    let text =
        "a\n```sh\necho 1\n```\n```toml\nx = 1\n```\n```\nplain\n```\n```shell\necho 2\n```\n";
    let blocks = shell_blocks(text);
    assert_eq!(
        blocks,
        vec![(2, "echo 1\n".to_owned()), (11, "echo 2\n".to_owned())]
    );
}

#[test]
fn every_shell_block_in_the_docs_runs_against_a_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_like_make_run(dir.path());
    let mut ran = 0;
    for file in doc_files() {
        let text = std::fs::read_to_string(&file).expect("read doc");
        for (line, block) in shell_blocks(&text) {
            let script = rewrite(&block, &node);
            let r = run_with_limit(
                Command::new("bash")
                    .args(["-eo", "pipefail", "-c", &script])
                    .current_dir(repo_root()),
                Duration::from_secs(60),
            );
            assert!(
                r.status.success(),
                "{}:{line}: the block failed\n--- as run:\n{script}\n--- stdout:\n{}\n--- stderr:\n{}",
                file.display(),
                r.stdout,
                r.stderr
            );
            ran += 1;
        }
    }
    assert!(ran >= 5, "only {ran} shell blocks found");
}
