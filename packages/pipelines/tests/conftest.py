from testutil.profiles import register_profiles

register_profiles()
