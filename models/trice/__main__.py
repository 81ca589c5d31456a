from ppl.models.trice.benchmark import main

if __name__ == "__main__":
    main()
