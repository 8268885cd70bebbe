//! A campaign's configuration read back from `campaign.json` (hand-edited
//! or corrupt): deserialised, then validated as the CLI validates; a
//! configuration that passes yields workload parameters that pass too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(config) = serde_json::from_slice::<controller::config::CampaignConfig>(data) else {
        return;
    };
    if config.validate().is_ok() {
        let params = config.workload_params(0, None, Some(config.ack_area_offset_bytes()));
        assert!(params.validate().is_ok());
    }
});
