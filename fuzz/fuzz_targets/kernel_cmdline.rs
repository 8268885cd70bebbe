//! The workload's parameters from the guest kernel's command line: parsing
//! gives parameters or an error, never a panic; parameters that validate
//! survive a round trip through `to_kernel_args`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(params) = record::WorkloadParams::from_kernel_cmdline(&text) else {
        return;
    };
    if params.validate().is_ok() {
        let again = record::WorkloadParams::from_kernel_cmdline(&params.to_kernel_args().join(" "))
            .expect("parameters that validate give a command line that parses");
        assert_eq!(again, params);
    }
});
