//! `mwt eval`: COCO mAP of predictions against ground truth, each a COCO JSON file
//! (annotations / results) or a YOLO label folder (predictions with a confidence
//! column). Glue only: the evaluation is `cardet_detect::eval`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use cardet_detect::{dataset, eval, image_io};

/// The flags of `mwt eval`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  mwt eval --gt instances_val.json --pred results.json\n  mwt eval --gt data/labels/val --pred runs/predict/labels --json\n  mwt eval --gt gt.json --pred pred_labels/ --plot pr.png"
)]
pub struct EvalFlags {
    /// Ground truth: a COCO annotations JSON file or a YOLO label folder.
    #[arg(long)]
    gt: PathBuf,
    /// Predictions: a COCO results JSON file or a YOLO label folder
    /// (`class cx cy w h confidence` lines).
    #[arg(long)]
    pred: PathBuf,
    /// Class names from a `data.yaml` (default: the COCO names).
    #[arg(long)]
    names: Option<PathBuf>,
    /// Also draw the precision-recall curves into this PNG.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// One JSON object (`map50`, `map50_95`, `per_class`, ...) instead of the table.
    #[arg(long)]
    json: bool,
}

/// Runs the evaluation and prints the table or the JSON object.
pub fn run(flags: &EvalFlags) -> anyhow::Result<()> {
    let names = match &flags.names {
        Some(path) => dataset::read_data_yaml(path)?.names,
        None => cardet_detect::classes::coco_names(),
    };
    let (ground_truth, predictions, diagnostics) =
        eval::load_inputs(&flags.gt, &flags.pred, &names).with_context(|| {
            format!(
                "reading {} and {}",
                flags.gt.display(),
                flags.pred.display()
            )
        })?;
    for diagnostic in &diagnostics {
        eprintln!("mwt eval: warning: {diagnostic}");
    }
    anyhow::ensure!(
        !ground_truth.images.is_empty(),
        "{} holds no images to evaluate",
        flags.gt.display()
    );
    let report = eval::evaluate(&ground_truth, &predictions);
    if let Some(plot) = &flags.plot {
        image_io::save(&eval::plot_pr_curves(&report, (960, 720)), plot)?;
    }
    let mut stdout = std::io::stdout().lock();
    if flags.json {
        writeln!(stdout, "{}", report.to_json())?;
    } else {
        write!(stdout, "{}", report.to_table())?;
        writeln!(
            stdout,
            "{} images, {} predictions; mAP@0.5 {:.4}, mAP@0.5:0.95 {:.4}",
            report.n_images,
            predictions.len(),
            report.map50,
            report.map50_95
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(gt_lines: &str, pred_lines: &str, json: bool, expected: &str) {
        let dir = tempfile::tempdir().expect("temp dir");
        let (gt, pred) = (dir.path().join("gt"), dir.path().join("pred"));
        std::fs::create_dir_all(&gt).expect("mkdir");
        std::fs::create_dir_all(&pred).expect("mkdir");
        std::fs::write(gt.join("a.txt"), gt_lines).expect("write");
        std::fs::write(pred.join("a.txt"), pred_lines).expect("write");
        let plot = dir.path().join("pr.png");
        let flags = EvalFlags {
            gt,
            pred,
            names: None,
            plot: Some(plot.clone()),
            json,
        };
        let outcome = run(&flags).map_err(|error| format!("{error:#}"));
        match outcome {
            Ok(()) => assert!(plot.exists(), "no plot written"),
            Err(message) => assert!(message.contains(expected), "{message}"),
        }
    }

    #[test]
    fn evaluates_yolo_folders_and_names_bad_input() {
        check("2 0.5 0.5 0.2 0.2\n", "2 0.5 0.5 0.2 0.2 0.9\n", true, "");
        check("2 0.5 0.5 0.2 0.2\n", "2 0.5 0.5 0.2 0.2 0.9\n", false, "");
        // A malformed ground-truth file is a warning, not an abort: its image is left out.
        check("2 0.5 0.5 0.2\n", "", false, "");
        let missing = EvalFlags {
            gt: PathBuf::from("/nonexistent/gt.json"),
            pred: PathBuf::from("/nonexistent/pred.json"),
            names: None,
            plot: None,
            json: true,
        };
        let message = format!("{:#}", run(&missing).expect_err("missing files"));
        assert!(message.contains("/nonexistent/gt.json"), "{message}");
    }
}
