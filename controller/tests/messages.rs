//! The words crashlab prints are written as sentences: a string literal
//! whose line continuation was lost prints a run of spaces in the middle of
//! a message (found in three errors: --jobs, slurm, a program's flags).

use std::path::Path;

/// Runs of spaces inside a string literal of the controller's non-test
/// code: (file, line, literal).
fn spaced_literals() -> Vec<(String, usize, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    let mut files = vec![src.clone()];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        // Test modules hold fixture text with aligned columns.
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for (n, line) in code.lines().enumerate() {
            let Some(start) = line.find('"') else { continue };
            let literal = &line[start..];
            if literal.contains("      ") && !literal.contains("\\n") {
                found.push((path.display().to_string(), n + 1, literal.trim().to_string()));
            }
        }
    }
    found
}

#[test]
fn no_message_carries_a_run_of_spaces_from_a_lost_line_continuation() {
    let found = spaced_literals();
    assert!(found.is_empty(), "string literals with a run of spaces: {found:#?}");
}
