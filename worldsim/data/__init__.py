"""Episode data: the on-disk episode store, Crafter collection and VPT recording conversion."""

from worldsim.data.store import (CorruptEpisode, CorruptEpisodeWarning, Episode, EpisodeStore,
                                 StoreError, StoreInfo)

__all__ = ["CorruptEpisode", "CorruptEpisodeWarning", "Episode", "EpisodeStore", "StoreError",
           "StoreInfo"]
