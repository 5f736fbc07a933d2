//! Both sniffers on arbitrary prefixes: never panic; an answer never changes with more bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let full = sluice_sniff::sniff_message(data);
    let _ = sluice_sniff::sniff_connection(data);
    if let Ok(answer) = full {
        // Any shorter prefix either needs more bytes or already gives the same answer.
        for n in 0..data.len().min(64) {
            if let Ok(early) = sluice_sniff::sniff_message(&data[..n]) {
                assert_eq!(early, answer);
            }
        }
    }
});
