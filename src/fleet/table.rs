//! Plain-text output of the fleet commands: aligned columns, and name
//! lists that stay readable for a hundred hosts.

/// Rows as aligned columns (two spaces apart; the last column is not
/// padded), one line each.
pub fn columns(rows: &[Vec<String>]) -> String {
    let count = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..count)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = widths[c] - cell.chars().count();
                line.push_str(cell);
                line.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `names` space-separated, or `-` for none.
pub fn names<S: AsRef<str>>(names: &[S]) -> String {
    if names.is_empty() {
        return "-".to_string();
    }
    names
        .iter()
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `1 host` or `3 hosts`.
pub fn hosts(n: usize) -> String {
    match n {
        1 => "1 host".to_string(),
        n => format!("{n} hosts"),
    }
}

/// A JSON object of `pairs` (by name), for `--json`.
pub(super) fn json_object<T: serde::Serialize>(pairs: &[(String, T)]) -> serde_json::Value {
    serde_json::Value::Object(
        pairs
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::json!(v)))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_and_lines_end_clean() {
        let rows = vec![
            vec!["HOST".to_string(), "RESULT".into(), "DETAIL".into()],
            vec!["node10".into(), "ok".into(), "".into()],
            vec!["n1".into(), "failed".into(), "failed post: x".into()],
        ];
        assert_eq!(
            columns(&rows),
            "HOST    RESULT  DETAIL\nnode10  ok\nn1      failed  failed post: x\n"
        );
        assert_eq!(names::<&str>(&[]), "-");
        assert_eq!(hosts(1), "1 host");
    }
}
