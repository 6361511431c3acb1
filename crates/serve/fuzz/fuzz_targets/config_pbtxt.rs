//! `config.pbtxt` parsing.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let text = String::from_utf8_lossy(input);
    let _ = cardet_serve::model_config::ModelConfig::from_text(&text, "fuzz");
});
