"""Configuration: profiles (local, aws, gcp), building cloud profiles from the user's
credentials, and the backend each profile uses."""
