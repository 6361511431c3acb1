//! The loader end to end on datasets written to a temporary folder: determinism
//! across worker counts, distributed sharding, and failures that name their file.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use cardet_augment::{AugmentConfig, Batch, Error, Loader, LoaderConfig};
use cardet_detect::dataset::DatasetItem;

fn train_config(workers: usize) -> LoaderConfig {
    LoaderConfig {
        imgsz: 128,
        batch_size: 4,
        workers,
        prefetch_batches: 2,
        seed: 7,
        shuffle: true,
        augment: Some(AugmentConfig {
            degrees: 5.0,
            ..AugmentConfig::default()
        }),
        rect: false,
        rank: 0,
        world_size: 1,
        drop_last: false,
    }
}

fn collect(loader: &Loader, epoch: u64, mosaic: bool) -> Vec<Batch> {
    loader
        .epoch(epoch, mosaic)
        .collect::<Result<Vec<Batch>, Error>>()
        .expect("every batch builds")
}

/// Everything a batch carries, comparable with `==`: pixels, shape, targets (as
/// bits) and image paths.
type Fingerprint = (Vec<u8>, [usize; 4], Vec<[u32; 6]>, Vec<PathBuf>);

fn fingerprint(batches: &[Batch]) -> Vec<Fingerprint> {
    batches
        .iter()
        .map(|batch| {
            (
                batch.images.clone(),
                batch.shape,
                batch
                    .targets
                    .iter()
                    .map(|target| target.map(f32::to_bits))
                    .collect(),
                batch
                    .items
                    .iter()
                    .map(|item| item.image_path.clone())
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn batches_depend_on_seed_and_epoch_not_on_workers() {
    let folder = tempfile::tempdir().expect("temp dir");
    let items = common::write_rectangles_dataset(folder.path(), 22);
    let single = Loader::new(items.clone(), train_config(1)).expect("loader");
    let three = Loader::new(items.clone(), train_config(3)).expect("loader");
    let inline = Loader::new(items, train_config(0)).expect("loader");
    assert_eq!(single.batches_per_epoch(), 6);
    assert_eq!(single.len_items(), 22);

    for mosaic in [true, false] {
        let reference = fingerprint(&collect(&single, 0, mosaic));
        assert_eq!(reference.len(), 6);
        assert_eq!(
            reference.last().map(|batch| batch.1[0]),
            Some(2),
            "22 = 5 * 4 + 2"
        );
        assert_eq!(fingerprint(&collect(&three, 0, mosaic)), reference);
        assert_eq!(fingerprint(&collect(&inline, 0, mosaic)), reference);
        assert_eq!(
            fingerprint(&collect(&single, 0, mosaic)),
            reference,
            "repeatable"
        );
        let next_epoch = fingerprint(&collect(&three, 1, mosaic));
        assert_ne!(next_epoch, reference);
        // A new epoch is a new order, not just new pixels.
        let paths = |batches: &[Fingerprint]| {
            batches
                .iter()
                .flat_map(|batch| batch.3.clone())
                .collect::<Vec<_>>()
        };
        assert_ne!(paths(&next_epoch), paths(&reference));
    }
}

#[test]
fn training_batches_are_square_with_normalised_targets() {
    let folder = tempfile::tempdir().expect("temp dir");
    let items = common::write_rectangles_dataset(folder.path(), 9);
    let loader = Loader::new(items, train_config(2)).expect("loader");
    let batches = collect(&loader, 3, true);
    let mut n_targets = 0;
    for batch in &batches {
        let [n, channels, height, width] = batch.shape;
        assert_eq!((channels, height, width), (3, 128, 128));
        assert_eq!(batch.images.len(), n * 3 * 128 * 128);
        assert_eq!(batch.items.len(), n);
        for target in &batch.targets {
            assert!((target[0] as usize) < n);
            assert!((target[1] as usize) < common::PALETTE.len());
            for value in &target[2..] {
                assert!((0.0..=1.0).contains(value), "{target:?}");
            }
            n_targets += 1;
        }
    }
    assert!(
        n_targets > 9,
        "mosaics of 9 images carry more than 9 objects, got {n_targets}"
    );
}

#[test]
fn ranks_split_the_epoch_disjointly_and_cover_the_dataset() {
    let folder = tempfile::tempdir().expect("temp dir");
    let items = common::write_rectangles_dataset(folder.path(), 11);
    let all_paths: Vec<PathBuf> = items.iter().map(|item| item.image_path.clone()).collect();
    for epoch in 0..3 {
        let mut seen: BTreeMap<PathBuf, usize> = BTreeMap::new();
        let mut orders = Vec::new();
        for rank in 0..2 {
            let config = LoaderConfig {
                rank,
                world_size: 2,
                workers: 2,
                ..train_config(2)
            };
            let loader = Loader::new(items.clone(), config).expect("loader");
            assert_eq!(loader.len_items(), 6, "ceil(11 / 2)");
            assert_eq!(loader.batches_per_epoch(), 2);
            let paths: Vec<PathBuf> = collect(&loader, epoch, true)
                .iter()
                .flat_map(|batch| batch.items.iter().map(|item| item.image_path.clone()))
                .collect();
            assert_eq!(paths.len(), 6);
            for path in &paths {
                *seen.entry(path.clone()).or_default() += 1;
            }
            orders.push(paths);
        }
        // 12 slots for 11 images: every image once, and exactly one padded
        // repeat, which is the first image of the epoch's order (rank 0's first).
        assert_eq!(seen.keys().cloned().collect::<Vec<_>>(), {
            let mut sorted = all_paths.clone();
            sorted.sort();
            sorted
        });
        let repeated: Vec<&PathBuf> = seen
            .iter()
            .filter(|(_, count)| **count > 1)
            .map(|(path, _)| path)
            .collect();
        assert_eq!(repeated, vec![&orders[0][0]], "epoch {epoch}");
        assert_eq!(seen.values().sum::<usize>(), 12);
    }
}

#[test]
fn drop_last_drops_the_incomplete_batch() {
    let folder = tempfile::tempdir().expect("temp dir");
    let items = common::write_rectangles_dataset(folder.path(), 10);
    let config = LoaderConfig {
        drop_last: true,
        ..train_config(2)
    };
    let loader = Loader::new(items, config).expect("loader");
    assert_eq!((loader.batches_per_epoch(), loader.len_items()), (2, 8));
    let batches = collect(&loader, 0, false);
    assert_eq!(batches.len(), 2);
    assert!(batches.iter().all(|batch| batch.shape[0] == 4));
}

#[test]
fn bad_configurations_are_refused() {
    let folder = tempfile::tempdir().expect("temp dir");
    let items = common::write_rectangles_dataset(folder.path(), 2);
    let refuse = |config: LoaderConfig, fragment: &str| {
        let message = match Loader::new(items.clone(), config) {
            Ok(_) => panic!("accepted a config that should fail with {fragment:?}"),
            Err(error) => error.to_string(),
        };
        assert!(message.contains(fragment), "{message}");
    };
    refuse(
        LoaderConfig {
            imgsz: 100,
            ..train_config(1)
        },
        "multiple of the stride",
    );
    refuse(
        LoaderConfig {
            batch_size: 0,
            ..train_config(1)
        },
        "batch_size",
    );
    refuse(
        LoaderConfig {
            rank: 2,
            world_size: 2,
            ..train_config(1)
        },
        "rank 2",
    );
    refuse(
        LoaderConfig {
            rect: true,
            ..train_config(1)
        },
        "shuffled",
    );
    refuse(
        LoaderConfig {
            augment: Some(AugmentConfig {
                fliplr: 1.5,
                ..AugmentConfig::default()
            }),
            ..train_config(1)
        },
        "fliplr",
    );
    assert!(matches!(
        Loader::new(Vec::new(), train_config(1)),
        Err(Error::InvalidConfig(_))
    ));
}

/// Runs the epoch on another thread, so a hang fails the test instead of stalling it.
fn run_epoch_with_deadline(
    items: Vec<DatasetItem>,
    config: LoaderConfig,
) -> Vec<Result<[usize; 4], String>> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let loader = Loader::new(items, config).expect("loader");
        let results: Vec<Result<[usize; 4], String>> = loader
            .epoch(0, true)
            .map(|batch| {
                batch
                    .map(|batch| batch.shape)
                    .map_err(|error| error.to_string())
            })
            .collect();
        let _ = sender.send(results);
    });
    receiver
        .recv_timeout(Duration::from_secs(120))
        .expect("the epoch ends instead of hanging")
}

#[test]
fn a_corrupt_image_is_an_error_naming_its_file_and_the_epoch_ends() {
    let folder = tempfile::tempdir().expect("temp dir");
    let mut items = common::write_rectangles_dataset(folder.path(), 12);
    // Truncate one PNG after its header: the dataset scan (which reads only the
    // header) accepts it, so only decoding finds the damage, as with a disk error.
    let broken = items[5].image_path.clone();
    let bytes = std::fs::read(&broken).expect("reads png");
    std::fs::write(&broken, &bytes[..bytes.len() / 2]).expect("truncates png");
    items[5] = cardet_detect::dataset::read_item(&broken, common::PALETTE.len())
        .expect("the header still reads");

    for workers in [0, 1, 3] {
        for augment in [Some(AugmentConfig::default()), None] {
            let config = LoaderConfig {
                workers,
                shuffle: augment.is_some(),
                augment: augment.clone(),
                ..train_config(workers)
            };
            let results = run_epoch_with_deadline(items.clone(), config);
            let errors: Vec<&String> = results
                .iter()
                .filter_map(|result| result.as_ref().err())
                .collect();
            assert_eq!(errors.len(), 1, "workers {workers}: {results:?}");
            assert!(
                errors[0].contains(&broken.display().to_string()),
                "the error names the file: {}",
                errors[0]
            );
            assert!(
                results.last().is_some_and(Result::is_err),
                "the epoch ends at the error"
            );
        }
    }
}
