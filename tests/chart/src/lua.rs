//! The Argo CD health check (`docs/gitops/resource_customizations/realtime.dev/ChatCluster/health.lua`,
//! laid out as in Argo CD's `resource_customizations/`) run by Debian's Lua 5.1
//! interpreter: Argo CD runs health checks in gopher-lua, which has Lua 5.1 semantics.
//!
//! The object is handed over the way Argo CD does it: as a global table `obj` converted from the
//! object's JSON (JSON null becomes nil, arrays become 1-based sequences).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

/// The Lua interpreter (installed by hack/setup.d/60-lua.sh).
pub const LUA: &str = "lua5.1";

/// The folder of the health check, its `health_test.yaml` and `testdata/`, in the layout of
/// Argo CD's `resource_customizations/<group>/<kind>/`.
pub fn health_check_dir() -> PathBuf {
    crate::repo_path("docs/gitops/resource_customizations/realtime.dev/ChatCluster")
}

/// The health check file.
pub fn health_check_path() -> PathBuf {
    health_check_dir().join("health.lua")
}

/// What the health check returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Healthy, Progressing, Degraded, Suspended (Argo CD's health statuses).
    pub status: String,
    /// The message shown in Argo CD.
    pub message: String,
}

/// Running the health check failed.
#[derive(Debug, thiserror::Error)]
pub enum LuaError {
    /// The interpreter could not be started.
    #[error("failed to start {LUA} (hack/setup.d/60-lua.sh installs it): {0}")]
    Spawn(#[source] std::io::Error),
    /// The script raised an error or printed something unexpected.
    #[error("the health check failed ({status}): {stderr}{stdout}")]
    Script {
        status: std::process::ExitStatus,
        stdout: String,
        stderr: String,
    },
}

/// Runs the health check at `script` on `object`.
pub fn run_health_check(script: &Path, object: &Value) -> Result<Health, LuaError> {
    let mut script_path = String::new();
    write_lua_string(&mut script_path, &script.to_string_lossy());
    let program = format!(
        "obj = {}\n\
         local check = assert(loadfile({script_path}))\n\
         local hs = check()\n\
         io.write(tostring(hs.status), \"\\n\", tostring(hs.message), \"\\n\")\n",
        to_lua(object)
    );
    let mut child = Command::new(LUA)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(LuaError::Spawn)?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(program.as_bytes())
        .map_err(LuaError::Spawn)?;
    let output = child.wait_with_output().map_err(LuaError::Spawn)?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let mut lines = stdout.lines();
    match (output.status.success(), lines.next(), lines.next()) {
        (true, Some(status), Some(message)) => Ok(Health {
            status: status.to_string(),
            message: message.to_string(),
        }),
        _ => Err(LuaError::Script {
            status: output.status,
            stdout,
            stderr,
        }),
    }
}

/// A Lua table constructor for a JSON value.
pub fn to_lua(value: &Value) -> String {
    let mut out = String::new();
    write_lua(&mut out, value);
    out
}

fn write_lua(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("nil"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_lua_string(out, s),
        Value::Array(items) => {
            out.push('{');
            for item in items {
                write_lua(out, item);
                out.push_str(", ");
            }
            out.push('}');
        }
        Value::Object(map) => {
            out.push('{');
            for (key, item) in map {
                out.push('[');
                write_lua_string(out, key);
                out.push_str("] = ");
                write_lua(out, item);
                out.push_str(", ");
            }
            out.push('}');
        }
    }
}

/// A quoted Lua string; every byte outside printable ASCII (and quotes, backslashes) as `\ddd`.
fn write_lua_string(out: &mut String, s: &str) {
    out.push('"');
    for byte in s.bytes() {
        match byte {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(byte as char);
            }
            0x20..=0x7e => out.push(byte as char),
            _ => {
                let _ = write!(out, "\\{byte:03}");
            }
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn converts_nested_values_and_escapes_strings() {
        let lua = to_lua(&json!({"a": [1, "x\"y\n"], "b": null, "c": true}));
        assert_eq!(
            lua,
            r#"{["a"] = {1, "x\"y\010", }, ["b"] = nil, ["c"] = true, }"#
        );
    }
}
