//! `catdog weights download`.

use anyhow::Result;
use catdog::model::download::{Downloaded, download_resnet18};
use catdog::model::weights::{RESNET18_URL, WeightLocations};

use super::progress::Bar;

#[derive(clap::Args)]
pub struct WeightsArgs {
    #[command(subcommand)]
    pub command: WeightsCommand,
}

#[derive(clap::Subcommand)]
pub enum WeightsCommand {
    /// Fetch torchvision's ImageNet ResNet-18 weights (45 MB) into the cache
    /// ($CATDOG_CACHE, else $XDG_CACHE_HOME/catdog, else ~/.cache/catdog)
    Download,
}

pub fn run(args: WeightsArgs) -> Result<()> {
    match args.command {
        WeightsCommand::Download => {
            let dest = WeightLocations::from_env()?.cached_file();
            let bar = Bar::bytes(&format!("downloading {RESNET18_URL}"));
            let downloaded = download_resnet18(&dest, &bar);
            bar.finish();
            match downloaded? {
                Downloaded::AlreadyThere => println!("already there: {}", dest.display()),
                Downloaded::Fetched => println!("downloaded: {}", dest.display()),
            }
            Ok(())
        }
    }
}
