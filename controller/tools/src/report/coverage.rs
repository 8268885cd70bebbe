//! The report's coverage section: what the checked states of the
//! campaigns' power-loss trials cover of the model, by epoch size (a plot
//! of the share checked, and its table).

use std::fmt::Write as _;

use blocklog::EpochClass;

use super::{esc, rgb, svg_chart, CampaignResults, Plot};

pub const COVERAGE_COLOUR: (u8, u8, u8) = (148, 103, 189);

/// The trials' classes summed, by class (results before schema 1.5 carry
/// none).
pub(super) fn classes(campaigns: &[CampaignResults]) -> Vec<EpochClass> {
    let mut sum: Vec<EpochClass> = Vec::new();
    let trial_classes = campaigns
        .iter()
        .flat_map(|c| &c.trials)
        .filter_map(|t| serde_json::from_value::<Vec<EpochClass>>(t["coverage"]["by_epoch_size"].clone()).ok());
    for class in trial_classes.flatten() {
        let at = match sum.iter().position(|c| c.writes_min == class.writes_min) {
            Some(at) => at,
            None => {
                sum.push(EpochClass {
                    epochs: 0,
                    states_in_model: 0,
                    states: 0,
                    ..class.clone()
                });
                sum.len() - 1
            }
        };
        let c = &mut sum[at];
        c.epochs = c.epochs.saturating_add(class.epochs);
        c.states_in_model = c.states_in_model.saturating_add(class.states_in_model);
        c.states = c.states.saturating_add(class.states);
    }
    sum.sort_by_key(|c| c.writes_min);
    sum
}

fn label(c: &EpochClass) -> String {
    match c.writes_min == c.writes_max {
        true => c.writes_min.to_string(),
        false => format!("{}-{}", c.writes_min, c.writes_max),
    }
}

/// Percent of `part` in `whole` (100 for an empty whole).
fn share(part: u64, whole: u64) -> f64 {
    match whole {
        0 => 100.0,
        w => (100.0 * part as f64 / w as f64).min(100.0),
    }
}

fn plot(classes: &[EpochClass]) -> Plot {
    use plotters::prelude::*;
    if classes.is_empty() {
        return Err("no power-loss trial recorded its coverage by epoch size (results schema 1.5 does)".into());
    }
    let labels: Vec<String> = classes.iter().map(label).collect();
    let x_label = |x: &f64| match x.fract() == 0.0 {
        true => labels.get(*x as usize).cloned().unwrap_or_default(),
        false => String::new(),
    };
    svg_chart(
        classes.len() as f64,
        105.0,
        (
            "optional writes of an epoch (each bar: a class of epochs)",
            "% of the model's states checked",
        ),
        Some(&x_label),
        |chart| {
            chart
                .draw_series(classes.iter().enumerate().map(|(i, c)| {
                    Rectangle::new(
                        [
                            (i as f64 + 0.1, 0.0),
                            (i as f64 + 0.9, share(c.states, c.states_in_model)),
                        ],
                        rgb(COVERAGE_COLOUR).filled(),
                    )
                }))
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
    )
}

/// The section: the plot, then the table it draws.
pub(super) fn section(campaigns: &[CampaignResults]) -> String {
    let classes = classes(campaigns);
    let mut h = String::from(
        "<div class=\"plot\" id=\"plot-coverage\"><h3>Coverage of the power-loss model by epoch size</h3>",
    );
    match plot(&classes) {
        Ok(svg) => h += &svg,
        Err(why) => {
            let _ = writeln!(h, "<p class=\"none\">No plot: {}.</p></div>", esc(&why));
            return h;
        }
    }
    h += "<table><tr><th>optional writes</th><th>epochs</th><th>states in the model</th>\
          <th>states checked</th><th>share</th></tr>\n";
    for c in &classes {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}%</td></tr>",
            label(c),
            c.epochs,
            c.states_in_model,
            c.states,
            share(c.states, c.states_in_model)
        );
    }
    h += "</table><p>States in the model are counted before equal contents are removed: a share under \
          100% in an enumerated class is the duplicates, not states left out.</p></div>\n";
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(classes: serde_json::Value) -> serde_json::Value {
        serde_json::json!({ "coverage": { "by_epoch_size": classes } })
    }

    #[test]
    fn classes_sum_over_trials_and_draw() {
        let class = |min: u64, max: u64, epochs: u64, model: u64, states: u64| {
            serde_json::json!({"writes_min": min, "writes_max": max, "epochs": epochs,
                               "states_in_model": model, "states": states})
        };
        let campaign = CampaignResults {
            dir: "c".into(),
            meta: serde_json::Value::Null,
            summary: None,
            trials: vec![
                trial(serde_json::json!([class(1, 1, 10, 20, 20), class(4, 7, 2, 64, 16)])),
                trial(serde_json::json!([class(1, 1, 5, 10, 10)])),
                // A line from before schema 1.5: no classes.
                serde_json::json!({ "coverage": { "states": 3 } }),
            ],
            states: Vec::new(),
        };
        let summed = classes(std::slice::from_ref(&campaign));
        assert_eq!(summed.len(), 2);
        assert_eq!(
            (summed[0].epochs, summed[0].states_in_model, summed[0].states),
            (15, 30, 30)
        );
        assert_eq!((summed[1].writes_min, summed[1].states), (4, 16));
        let html = section(std::slice::from_ref(&campaign));
        assert!(html.contains("<svg") && html.contains("#9467BD"), "{html}");
        assert!(
            html.contains("<td>4-7</td><td>2</td><td>64</td><td>16</td><td>25.0%</td>"),
            "{html}"
        );
        let none = section(&[]);
        assert!(none.contains("No plot"), "{none}");
    }
}
