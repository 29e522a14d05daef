//! `bulkhead inspect`: containers' state and configuration as a JSON array, with
//! `network_settings` (mode, address, gateway, MAC, published ports).

use super::Ctx;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Container names or ids.
    #[arg(required = true)]
    pub containers: Vec<String>,
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    let containers = ctx.containers();
    let mut out = Vec::new();
    for c in &args.containers {
        let s = containers.find(c)?;
        let mut v = serde_json::to_value(&s)?;
        v["state_dir"] = containers.dir(&s.id).path.display().to_string().into();
        v["display_status"] = s.display_status().into();
        v["network_settings"] = crate::network::settings_json(&s);
        out.push(v);
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
