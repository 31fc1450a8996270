from personaloom.preload import launch

launch()
