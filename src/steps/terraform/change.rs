//! The change a saved terraform plan makes, as an operator approves it: one line per resource
//! from `terraform show -json`, destroys and replacements first, then updates, then creates.
//! A replacement names the attributes that force it, an update the attributes it changes.
//!
//! It prints names, never values: `show -json` holds sensitive values in clear (terraform only
//! marks them), and a value that is not marked may still be one.

use serde_json::Value;

/// The resource (and output) changes of `plan` (`terraform show -json` of a saved plan), one
/// indented line each; empty when it lists none.
pub(super) fn describe(plan: &Value) -> String {
    let resources = plan["resource_changes"].as_array().into_iter().flatten().filter_map(|c| {
        let address = c["address"].as_str().unwrap_or("?");
        line(address, &c["change"], c["action_reason"].as_str())
    });
    let outputs = plan["output_changes"].as_object().into_iter().flatten().filter_map(|(name, change)| {
        let (rank, label) = action(change)?;
        Some((rank, format!("  {label:<8} output.{name}")))
    });
    let mut lines: Vec<(u8, String)> = resources.chain(outputs).collect();
    // Stable: within a kind, terraform's own order (by address); outputs after resources.
    lines.sort_by_key(|(rank, _)| *rank);
    lines.into_iter().map(|(_, l)| l).collect::<Vec<_>>().join("\n")
}

/// The kind of a change (its rank in the listing and its word), `None` when nothing changes
/// (a no-op, a data source read).
fn action(change: &Value) -> Option<(u8, String)> {
    let actions: Vec<&str> = change["actions"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let importing = !change["importing"].is_null();
    Some(match actions.as_slice() {
        ["no-op"] if importing => (4, "import".into()),
        ["no-op"] | ["read"] => return None,
        ["delete"] => (1, "destroy".into()),
        ["delete", "create"] | ["create", "delete"] => (2, "replace".into()),
        ["forget"] => (3, "forget".into()),
        ["update"] => (5, "update".into()),
        ["create"] => (6, "create".into()),
        // An action this code does not know: first, so that it is seen.
        [] => (0, "?".into()),
        other => (0, other.join(", ")),
    })
}

/// One resource's line, `None` when it does not change.
fn line(address: &str, change: &Value, reason: Option<&str>) -> Option<(u8, String)> {
    let (rank, label) = action(change)?;
    let head = format!("  {label:<8} {address}");
    let text = match (label.as_str(), change["actions"][0].as_str()) {
        ("destroy", _) if reason == Some("delete_because_no_resource_config") => {
            format!("{head} (no longer in the configuration)")
        }
        ("replace", first) => {
            let order = if first == Some("create") { "create, then destroy" } else { "destroy, then create" };
            format!("{head} ({order}; {})", why_replaced(change, reason))
        }
        ("forget", _) => format!("{head} (left in AWS, removed from terraform's state)"),
        ("update", _) => format!("{head}: {}", changed_attributes(change)),
        _ => head,
    };
    Some((rank, text))
}

/// What forces a replacement: the attributes terraform names (`replace_paths`), or its reason.
fn why_replaced(change: &Value, reason: Option<&str>) -> String {
    let paths: Vec<String> = change["replace_paths"].as_array().into_iter().flatten().map(path).collect();
    if !paths.is_empty() {
        return format!("forced by {}", paths.join(", "));
    }
    match reason {
        Some("replace_because_tainted") => "tainted".into(),
        Some("replace_by_request") => "requested with -replace".into(),
        _ => "terraform names no attribute".into(),
    }
}

/// A path into a resource's attributes (`["network_interface", 0, "subnet_id"]`) as
/// `network_interface[0].subnet_id`.
fn path(steps: &Value) -> String {
    let mut out = String::new();
    for step in steps.as_array().into_iter().flatten() {
        match step {
            Value::Number(n) => out.push_str(&format!("[{n}]")),
            Value::String(s) if s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(s);
            }
            other => out.push_str(&format!("[{other}]")),
        }
    }
    out
}

/// The names of the top-level attributes an update changes (its value differs, or is known
/// only after the apply), each marked when terraform marks it sensitive. Values never.
fn changed_attributes(change: &Value) -> String {
    let (before, after, unknown) = (&change["before"], &change["after"], &change["after_unknown"]);
    let mut names: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
    for side in [before, after, unknown] {
        names.extend(side.as_object().into_iter().flatten().map(|(k, _)| k.as_str()));
    }
    let changed: Vec<String> = names
        .into_iter()
        .filter_map(|name| {
            let later = any_true(&unknown[name]);
            if before[name] == after[name] && !later {
                return None;
            }
            let sensitive = any_true(&change["before_sensitive"][name]) || any_true(&change["after_sensitive"][name]);
            let mark = match (sensitive, later) {
                (true, _) => " (sensitive)",
                (false, true) => " (known after apply)",
                (false, false) => "",
            };
            Some(format!("{name}{mark}"))
        })
        .collect();
    if changed.is_empty() { "no attribute named by terraform".into() } else { changed.join(", ") }
}

/// Whether terraform's marks (`true`, or objects and lists of them) hold a `true` anywhere.
fn any_true(marks: &Value) -> bool {
    match marks {
        Value::Bool(b) => *b,
        Value::Array(items) => items.iter().any(any_true),
        Value::Object(fields) => fields.values().any(any_true),
        _ => false,
    }
}

#[cfg(test)]
mod tests;
