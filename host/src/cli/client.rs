//! Client commands: `status`, `failback`, `switchover`, `signal send`. They
//! talk to a node's admin API.

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

/// Where the node is and how to authenticate.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// The node's admin URL.
    #[arg(
        long,
        default_value = "http://127.0.0.1:8080",
        env = "TANDEM_ADMIN_URL"
    )]
    pub admin: String,
    /// The admin token.
    #[arg(long, env = "TANDEM_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// `tandem signal ...`.
#[derive(Debug, Subcommand)]
pub enum SignalCommand {
    /// Send one signal to every node given, with one key, and report which
    /// node executed it.
    Send {
        /// The signal's name.
        name: String,
        /// A field, `key=value` (JSON if it parses, else text).
        #[arg(long = "field", value_name = "KEY=VALUE")]
        fields: Vec<String>,
        /// The idempotency key (default: a new random one).
        #[arg(long)]
        key: Option<String>,
        #[arg(long, default_value = "cli")]
        source: String,
        /// A node's admin URL; repeat for each node of the pair.
        #[arg(long = "node", required = true)]
        nodes: Vec<String>,
        /// The ingest or admin token.
        #[arg(long, env = "TANDEM_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

async fn call(
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()?;
    let mut req = client.request(method, &url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = resp.status().as_u16();
    let text = resp.text().await?;
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    Ok((status, json))
}

fn fail_on(status: u16, body: &serde_json::Value) -> anyhow::Result<()> {
    if status >= 400 {
        let msg = body["error"]
            .as_str()
            .map_or_else(|| body.to_string(), str::to_owned);
        bail!("{status}: {msg}");
    }
    Ok(())
}

/// `method` `/api/v1/{path}`; the JSON answer, or an error with its
/// message.
fn api(t: &Target, method: reqwest::Method, path: &str) -> anyhow::Result<serde_json::Value> {
    let (code, body) = runtime()?.block_on(call(
        method,
        format!("{}/api/v1/{path}", t.admin.trim_end_matches('/')),
        t.token.as_deref(),
        None,
    ))?;
    fail_on(code, &body)?;
    Ok(body)
}

/// `tandem status`.
pub fn status(t: &Target) -> anyhow::Result<()> {
    let body = get_json(t, "status")?;
    println!("{}", serde_json::to_string_pretty(&body)?);
    Ok(())
}

/// GET `/api/v1/{path}`; the JSON answer, or an error with its message.
pub fn get_json(t: &Target, path: &str) -> anyhow::Result<serde_json::Value> {
    api(t, reqwest::Method::GET, path)
}

/// POST to `/api/v1/{path}`; the JSON answer, or an error with its message.
pub fn post_json(t: &Target, path: &str) -> anyhow::Result<serde_json::Value> {
    api(t, reqwest::Method::POST, path)
}

/// `tandem failback` and `tandem switchover`.
pub fn pair_command(t: &Target, what: &str) -> anyhow::Result<()> {
    let body = post_json(t, what)?;
    println!("{}", body["result"].as_str().unwrap_or("done"));
    Ok(())
}

/// `tandem signal send`.
pub fn signal(cmd: SignalCommand) -> anyhow::Result<()> {
    let SignalCommand::Send {
        name,
        fields,
        key,
        source,
        nodes,
        token,
    } = cmd;
    let key = match key {
        Some(k) => k,
        None => {
            let mut b = [0u8; 8];
            getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("random key: {e}"))?;
            format!("cli-{}", hex::encode(b))
        }
    };
    let mut map = serde_json::Map::new();
    for f in &fields {
        let (k, v) = super::rule::parse_field(f)?;
        map.insert(k, serde_json::to_value(v)?);
    }
    let body = serde_json::json!({"name": name, "source": source, "key": key, "fields": map});
    let rt = runtime()?;
    let mut executed_by = Vec::new();
    let mut errors = 0;
    for node in &nodes {
        let url = format!("{}/api/v1/signals", node.trim_end_matches('/'));
        match rt.block_on(call(
            reqwest::Method::POST,
            url,
            token.as_deref(),
            Some(body.clone()),
        )) {
            Ok((202, reply)) => {
                let acc = &reply["accepted"][0];
                let executed = acc["executed"].as_bool().unwrap_or(false);
                println!(
                    "{node}: accepted id={} state={} executed={executed}",
                    acc["id"],
                    reply["state"].as_str().unwrap_or("?")
                );
                if executed {
                    executed_by.push(node.clone());
                }
            }
            Ok((code, reply)) => {
                errors += 1;
                println!(
                    "{node}: refused {code}: {}",
                    reply["error"].as_str().unwrap_or("")
                );
            }
            Err(e) => {
                errors += 1;
                println!("{node}: unreachable: {e:#}");
            }
        }
    }
    println!(
        "key {key} executed by: {}",
        if executed_by.is_empty() {
            "no node".to_owned()
        } else {
            executed_by.join(", ")
        }
    );
    if errors == nodes.len() {
        bail!("no node accepted the signal");
    }
    Ok(())
}
